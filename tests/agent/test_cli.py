"""`python -m agent ...`: exit codes and messages."""

import json
import subprocess

import numpy as np
import pytest

from tests.agent.conftest import PYTHON, REPO, AgentProcess, make_config


def _cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "agent", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("body, field", [("device_id = 3\nstate_dir = '/tmp/x'\n", "device_id"),
                                         ("state_dir = '/tmp/x'\n", "device_id"),
                                         ("device_id = 'a'\nstate_dir = '/tmp/x'\ndevice_class = 'toaster'\n",
                                          "device_class")])
def test_bad_config_exits_2_without_traceback(tmp_path, body, field) -> None:
    p = tmp_path / "a.toml"
    p.write_text(body)
    r = _cli("run", "--config", str(p))
    assert r.returncode == 2 and field in r.stderr and "Traceback" not in r.stderr


def test_missing_config_file_exits_2(tmp_path) -> None:
    r = _cli("status", "--config", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "cannot read config" in r.stderr


def test_install_refused_exits_1(tmp_path, fleet_keys, bundles) -> None:
    cfg = make_config(tmp_path / "s", fleet_keys["pub"]).write(tmp_path / "a.toml")
    r = _cli("install", "--config", str(cfg), str(bundles["rogue_v5"]))
    assert r.returncode == 1 and "unknown-key" in r.stderr and "Traceback" not in r.stderr
    r = _cli("install", "--config", str(cfg), str(tmp_path / "missing.bundle"))
    assert r.returncode == 2


@pytest.mark.slow
def test_run_status_predict(tmp_path, fleet_keys, bundles, digits) -> None:
    sock = str(tmp_path / "a.sock")
    cfg = make_config(tmp_path / "s", fleet_keys["pub"], device_id="cli-1", unix_socket=sock)
    proc = AgentProcess(cfg, tmp_path / "a.toml")
    assert _cli("install", "--config", str(proc.config_path), str(bundles["v1"])).returncode == 0
    proc.start()
    try:
        st = json.loads(_cli("status", "--config", str(proc.config_path)).stdout)
        assert st["ready"] and st["active"]["version"] == 1 and st["pid"] == proc.proc.pid
        np.save(tmp_path / "x.npy", digits[0][:2])
        r = _cli("predict", "--config", str(proc.config_path), str(tmp_path / "x.npy"))
        assert r.returncode == 0, r.stderr
        assert np.asarray(json.loads(r.stdout)["outputs"]["logits"]).shape == (2, 10)
        (tmp_path / "bad.json").write_text(json.dumps({"inputs": {"x": [[1, 2]]}}))
        r = _cli("predict", "--socket", sock, str(tmp_path / "bad.json"))
        assert r.returncode == 2 and "dimension 1 is 2" in r.stderr
    finally:
        assert proc.stop() == 0
    assert json.loads((tmp_path / "s" / "status.json").read_text())["ready"] is False
    proc.start()
    proc.kill()  # kill -9: status.json still says ready, the CLI notices the dead pid
    st = json.loads(_cli("status", "--config", str(proc.config_path)).stdout)
    assert st["ready"] is False and st["stale"] is True


def test_mounted_under_root_cli(tmp_path) -> None:
    r = subprocess.run([PYTHON, "-c", "from edgefleet.cli import main; main()", "agent", "status",
                        "--state-dir", str(tmp_path), "--device-id", "root-1"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"ready": False, "active": None, "previous": None}
