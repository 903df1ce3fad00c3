"""kill -9 at every point of an install, then a restart: the last good model serves."""

import json
import os
import subprocess

import pytest

from agent.daemon import Agent
from tests.agent.conftest import PYTHON, REPO, make_config


def _install(cfg_path, bundle, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ}
    if fault:
        env["EDGEFLEET_FAULT_INJECT"] = fault
    return subprocess.run([PYTHON, "-m", "agent", "install", "--config", str(cfg_path), str(bundle)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("fault, expected", [("after-unpack", 1), ("after-load", 1), ("after-pointer", 2)])
def test_kill_during_install_keeps_last_good_model(tmp_path, fleet_keys, bundles, digits, fault, expected) -> None:
    cfg = make_config(tmp_path / "state", fleet_keys["pub"], device_id="crash-1")
    cfg_path = cfg.write(tmp_path / "agent.toml")
    first = _install(cfg_path, bundles["v1"])
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["installed"]["version"] == 1
    crashed = _install(cfg_path, bundles["v2"], fault)
    assert crashed.returncode == -9, crashed.stderr  # really killed by SIGKILL mid-install
    a = Agent(cfg).start()
    try:
        # after-pointer: v2 had passed every check and was committed, so it is the last good model
        assert a.predictor.active.version == expected
        assert a.predict(digits[0][:3])["logits"].shape == (3, 10)
        assert not [p for p in a.store.root.iterdir() if p.name.startswith(".")]  # staging cleaned
    finally:
        a.stop()
    again = _install(cfg_path, bundles["v2"])  # the interrupted install can simply be retried
    assert again.returncode == 0, again.stderr
