"""Issue 12, seen 6: unbounded pre-reads. A 10 KB bundle whose header declares 2^40 bytes made
`bundle inspect` and `agent install` spin for minutes; a 300 MB pax header was read whole before
any size check; a deeply nested manifest raised RecursionError. One bounded reader now refuses
each from its header (the subprocess timeouts below only guard against a hang)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from agent.bundle import BundleError, read_manifest_unverified, verify_bundle
from agent.canonical import canonical_json
from agent.keys import Keyring, load_public_key
from agent.tar_reader import BoundedTar, TarRefused
from tests.agent.conftest import PYTHON, REPO, make_config
from tests.agent.forge import ustar_header


def _keyring(fleet_keys) -> Keyring:
    return Keyring.from_public_keys([load_public_key(fleet_keys["build_pub"])])


def _huge_declared(path: Path) -> Path:
    """10 KB: a manifest.json header that declares 2^40 bytes, then filler."""
    data = ustar_header("manifest.json", 2**40) + b"{" + bytes(10 * 1024 - 513)
    path.write_bytes(data)
    return path


def _agent_install(tmp_path: Path, fleet_keys, bundle: Path) -> subprocess.CompletedProcess[str]:
    cfg = make_config(tmp_path / "state", fleet_keys["pub"], device_id="bounded-1")
    cfg_path = cfg.write(tmp_path / "agent.toml")
    return subprocess.run([PYTHON, "-m", "agent", "install", "--config", str(cfg_path), str(bundle)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_huge_declared_size_refused_by_inspect_verify_and_install(tmp_path: Path, fleet_keys) -> None:
    bundle = _huge_declared(tmp_path / "huge.bundle")
    with pytest.raises(BundleError) as err:
        read_manifest_unverified(bundle)
    assert err.value.reason == "too-large" and str(2**40) in str(err.value)
    with pytest.raises(BundleError) as err:
        verify_bundle(bundle, _keyring(fleet_keys))
    assert err.value.reason == "too-large"
    r = subprocess.run([sys.executable, "-m", "edgefleet", "bundle", "inspect", str(bundle)], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "too-large" in r.stderr and "Traceback" not in r.stderr
    r = _agent_install(tmp_path, fleet_keys, bundle)
    assert r.returncode == 1 and "too-large" in r.stderr and "Traceback" not in r.stderr


def test_declared_size_past_end_of_file_refused_without_reading(tmp_path: Path, fleet_keys) -> None:
    bundle = tmp_path / "short.bundle"
    bundle.write_bytes(ustar_header("manifest.json", 4096) + b"{}" + bytes(1022))
    with pytest.raises(BundleError) as err:
        read_manifest_unverified(bundle)
    assert err.value.reason == "malformed" and "holds only" in str(err.value)


def test_300mb_pax_header_refused_before_it_is_read(tmp_path: Path, fleet_keys) -> None:
    bundle = tmp_path / "pax.bundle"
    size = 300 * 1024 * 1024
    with open(bundle, "wb") as fh:  # sparse: the header declares 300 MB of pax records that really follow
        fh.write(ustar_header("././@PaxHeader", size, b"x"))
        fh.seek(512 + size)
        fh.write(ustar_header("manifest.json", 2) + b"{}" + bytes(510) + bytes(1024))
    tracemalloc.start()
    try:
        with pytest.raises(BundleError) as err:
            verify_bundle(bundle, _keyring(fleet_keys))
        with pytest.raises(BundleError) as err2:
            read_manifest_unverified(bundle)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.reason == "malformed" and "pax" in str(err.value)
    assert err2.value.reason == "malformed"
    assert peak < 16 * 1024 * 1024  # the 300 MB header was never read into memory


@pytest.mark.parametrize("depth", [100_000, 200])
def test_deeply_nested_manifest_refused(tmp_path: Path, fleet_keys, depth: int) -> None:
    body = b"[" * depth + b"]" * depth
    bundle = tmp_path / "deep.bundle"
    pad = -len(body) % 512
    sig = b'{"signatures":[]}'
    bundle.write_bytes(ustar_header("manifest.json", len(body)) + body + bytes(pad)
                       + ustar_header("signature.json", len(sig)) + sig + bytes(-len(sig) % 512) + bytes(1024))
    for call in (lambda: verify_bundle(bundle, _keyring(fleet_keys)), lambda: read_manifest_unverified(bundle)):
        with pytest.raises(BundleError) as err:
            call()
        assert err.value.reason == "malformed" and "nested deeper" in str(err.value)


def test_member_count_is_bounded() -> None:
    members = b"".join(ustar_header(f"payload/f{i}", 0) for i in range(20)) + bytes(1024)
    tar = BoundedTar(io.BytesIO(members), len(members), lambda name: 10, max_members=5)
    with pytest.raises(TarRefused) as err:
        for _ in tar:
            tar.read_body()
    assert err.value.reason == "too-large" and "more than 5 members" in str(err.value)


@pytest.mark.parametrize("kind, reason", [(b"1", "unsafe-path"), (b"2", "unsafe-path"), (b"5", "unsafe-path"),
                                          (b"g", "malformed"), (b"L", "malformed"), (b"K", "malformed")])
def test_non_regular_members_refused_at_the_header(kind: bytes, reason: str) -> None:
    data = ustar_header("manifest.json", 2**40, kind) + bytes(1024)
    tar = BoundedTar(io.BytesIO(data), len(data), lambda name: 2**41)
    with pytest.raises(TarRefused) as err:
        next(iter(tar))
    assert err.value.reason == reason


def test_a_good_bundle_still_inspects(bundles) -> None:
    manifest = read_manifest_unverified(bundles["v1"])
    assert manifest["model"]["name"] == "digits" and canonical_json(manifest)
    assert json.loads(canonical_json(manifest)) == manifest


def test_local_server_answers_deep_json_with_a_400(agent_factory, bundles) -> None:
    import urllib.error
    import urllib.request

    from tests.agent.conftest import free_port

    a = agent_factory(http_port=free_port())
    a.install(bundles["v1"])
    body = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    req = urllib.request.Request(f"http://127.0.0.1:{a.server.http_port}/v1/predict", data=body,
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)  # noqa: S310 - local test server
    assert err.value.code == 400 and "nested too deeply" in err.value.read().decode()


def test_an_unknown_dtype_in_an_installed_manifest_is_a_value_error() -> None:
    from agent.spec_check import TensorSpec

    with pytest.raises(ValueError, match="unknown dtype"):
        TensorSpec.from_dict({"name": "x", "shape": [1], "dtype": "float128x"})
