"""Issue 12, seen 2: a signed bundle named "../../PWNED_name" wrote outside the state dir; names
like "a/b" or 300 characters gave tracebacks. One grammar (agent.names) now refuses them at build,
verify and install, and every path the store writes is joined under its root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.bundle import BundleError, build_bundle, verify_bundle
from agent.keys import Keyring, load_private_key, load_public_key
from agent.lifecycle import InstallError
from agent.names import InvalidName, UnsafePath, is_valid_name, safe_join, validate_name
from tests.agent import models
from tests.agent.conftest import PYTHON, REPO, make_config
from tests.agent.forge import files_outside, forge_bundle

BAD_NAMES = ["../../PWNED_name", "a/b", "x" * 300, "..", ".hidden", "Digits", "a..b", "a\\b", "", "a b", "é"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_grammar_refuses(name: str) -> None:
    with pytest.raises(InvalidName) as err:
        validate_name("model name", name)
    assert "model name" in str(err.value) and len(str(err.value)) < 300  # one clear, bounded line
    assert not is_valid_name(name)


@pytest.mark.parametrize("name", ["digits", "x86-64-generic", "dev-1", "a", "resnet18_v1.5", "x" * 63])
def test_grammar_accepts(name: str) -> None:
    assert validate_name("device id", name) == name


def test_validate_name_is_a_value_error() -> None:
    assert issubclass(InvalidName, ValueError)
    with pytest.raises(InvalidName, match="must be a string"):
        validate_name("device class", 7)


def test_safe_join_stays_under_root(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "a", "b.json") == tmp_path / "a" / "b.json"
    for parts in (("..",), ("a/../..",), ("../x",), ("",), ("a\x00",)):
        with pytest.raises(UnsafePath):
            safe_join(tmp_path, *parts)
    (tmp_path / "inside").mkdir()
    (tmp_path / "inside" / "link").symlink_to("/etc")
    with pytest.raises(UnsafePath):
        safe_join(tmp_path / "inside", "link", "passwd")


def _forged(tmp_path: Path, model_files: dict, key_path: Path, name: str) -> Path:
    fields = models.manifest_fields(1, "onnx", "model.onnx", {}, name=name)
    out = tmp_path / f"forged-{abs(hash(name))}.bundle"
    return forge_bundle(out, {"model.onnx": model_files["onnx_v1"]}, fields, load_private_key(key_path))


def test_traversal_name_refused_by_verify_and_install_process(tmp_path: Path, fleet_keys, model_files) -> None:
    """The attack as seen: a validly signed bundle, installed with `agent install` (a real process)."""
    bundle = _forged(tmp_path, model_files, fleet_keys["build"], "../../PWNED_name")
    keyring = Keyring.from_public_keys([load_public_key(fleet_keys["build_pub"])])
    with pytest.raises(BundleError) as err:
        verify_bundle(bundle, keyring)
    assert err.value.reason == "bad-name" and "PWNED" in str(err.value)

    box = tmp_path / "box"
    state = box / "a" / "state"  # "../../" from state/models lands in box/
    cfg = make_config(state, fleet_keys["pub"], device_id="names-1")
    cfg_path = cfg.write(tmp_path / "agent.toml")
    r = subprocess.run([PYTHON, "-m", "agent", "install", "--config", str(cfg_path), str(bundle)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "bad-name" in r.stderr and "Traceback" not in r.stderr
    assert set(files_outside(box, state)) <= {box / "a"}
    assert not list(tmp_path.rglob("*PWNED*"))


@pytest.mark.parametrize("name", ["a/b", "x" * 300, "../../PWNED_name"])
def test_bad_names_refused_in_process_without_traceback(tmp_path: Path, agent_factory, fleet_keys, model_files,
                                                        name: str) -> None:
    a = agent_factory()
    bundle = _forged(tmp_path, model_files, fleet_keys["build"], name)
    with pytest.raises(InstallError) as err:
        a.install(bundle)
    assert err.value.reason == "bad-name"
    assert [p.name for p in a.store.root.iterdir()] == []  # nothing unpacked, no staging left
    assert not list(tmp_path.rglob("*PWNED*"))


@pytest.mark.parametrize("field, value", [("name", "a/b"), ("name", "x" * 300), ("device_class", "../x86")])
def test_build_refuses_bad_names(tmp_path: Path, model_files, fleet_keys, field: str, value: str) -> None:
    fields = models.manifest_fields(1, "onnx", "model.onnx", {})
    fields["model"][field] = value
    with pytest.raises(BundleError) as err:
        build_bundle(tmp_path / "x.bundle", {"model.onnx": model_files["onnx_v1"]}, fields,
                     load_private_key(fleet_keys["build"]))
    assert err.value.reason == "bad-name"
    assert not (tmp_path / "x.bundle").exists()


def test_cli_build_refuses_bad_name_cleanly(tmp_path: Path, model_files, fleet_keys) -> None:
    r = subprocess.run([sys.executable, "-m", "edgefleet", "bundle", "build", "--model", str(model_files["onnx_v1"]),
                        "--name", "a/b", "--version", "1", "--device-class", "x86-64-generic",
                        "--key", str(fleet_keys["build"]), "--out", str(tmp_path / "x.bundle")],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2, r.stderr
    assert "model name 'a/b'" in r.stderr and "Traceback" not in r.stderr


def test_agent_refuses_a_device_id_outside_the_grammar(tmp_path: Path, fleet_keys) -> None:
    from agent.config import ConfigError
    from agent.daemon import Agent

    with pytest.raises(ConfigError, match="device_id"):
        Agent(make_config(tmp_path / "s", fleet_keys["pub"], device_id="Dev.." + "x" * 70))


@pytest.mark.parametrize("sha", ["../../PWNED", "/etc/passwd", "A" * 64, "0" * 63])
def test_download_file_name_from_a_command_is_a_digest_not_a_path(tmp_path: Path, agent_factory, sha: str) -> None:
    a = agent_factory()
    with pytest.raises(InstallError) as err:
        a.commands.fetch({"url": "http://127.0.0.1:9/x.bundle", "bundle_sha256": sha, "size": 10})
    assert err.value.reason == "malformed" and "SHA-256" in str(err.value)
    assert not list(tmp_path.rglob("*PWNED*"))
