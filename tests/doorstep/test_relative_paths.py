"""Issue 11, seen 1: relative data/state/work dirs are made absolute once, where configuration is
read, so nothing resolves them against a package folder (Flask's send_file did: GET /artifacts
answered 500 and every install of `make demo` on a clean clone failed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.keys import generate_keypair, load_private_key
from fleet.devsim import make_bundle
from fleet.settings import FleetSettings, load_settings


def test_artifact_download_works_with_a_relative_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fleet.app import create_app, fleet_context

    monkeypatch.chdir(tmp_path)
    priv, pub = generate_keypair(Path("keys"), "build")  # relative too, as a user types it
    settings = FleetSettings(data_dir=Path(".edgefleet/fleet"), api_tokens={"t": "admin"}, trusted_build_keys=[pub],
                             start_rollouts=False, start_ingest=False, drift_interval_s=0)
    app = create_app(settings)
    try:
        c = app.test_client()
        meta = make_bundle(tmp_path / "b.tar", load_private_key(priv))
        data = (tmp_path / "b.tar").read_bytes()
        r = c.post("/api/models", headers={"Authorization": "Bearer t", "Content-Type": "application/octet-stream"},
                   data=data)
        assert r.status_code == 201, r.json
        got = c.get(f"/artifacts/{meta.bundle_sha256}")
        assert got.status_code == 200 and got.data == data
        assert (tmp_path / ".edgefleet/fleet/fleet.db").is_file()
        assert settings.data_dir == tmp_path / ".edgefleet/fleet"
        assert settings.trusted_build_keys == [tmp_path / "keys/build.pub"]
    finally:
        fleet_context(app).engine.dispose()


def test_paths_from_env_toml_and_flags_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fleet.toml").write_text('[fleet]\ndata_dir = "d1"\nsigning_key_path = "k/fleet.key"\n')
    s = load_settings("fleet.toml", env={})
    assert s.data_dir == tmp_path / "d1" and s.signing_key_path == tmp_path / "k/fleet.key"
    assert load_settings(env={"EDGEFLEET_FLEET_DATA": "d2"}).data_dir == tmp_path / "d2"
    assert load_settings(env={}, data_dir="d3").data_dir == tmp_path / "d3"
    assert FleetSettings().data_dir.is_absolute()


def test_agent_state_dir_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.config import load_config

    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, {"device_id": "d1", "state_dir": "state"}, environ={})
    assert cfg.state_dir == str(tmp_path / "state")


def test_agent_enrol_writes_an_absolute_state_dir(tmp_path: Path) -> None:
    """`agent enrol --state-dir state` then `agent run --config ...` from the service's own working
    directory must find the same state (the keys the enrolment pinned)."""
    import os
    import subprocess
    import sys

    import requests

    from agent.config import load_config
    from fleet.server import FleetServer

    _, pub = generate_keypair(tmp_path / "keys", "build")
    settings = FleetSettings(data_dir=tmp_path / "fleet", mqtt_url="mqtt://127.0.0.1:1883", trusted_build_keys=[pub],
                             api_tokens={"op": "operator"}, start_rollouts=False, embedded_broker=False)
    srv = FleetServer(settings, port=0, start_ingest=False, drift_evaluator=False).start()
    try:
        tok = requests.post(f"{srv.url}/api/enrolment-tokens", headers={"Authorization": "Bearer op"}, json={},
                            timeout=10).json()["token"]
        home = tmp_path / "home"
        home.mkdir()
        repo = Path(__file__).resolve().parents[2]
        res = subprocess.run([sys.executable, "-m", "edgefleet", "agent", "enrol", "--fleet-url", srv.url,
                              "--token", tok, "--state-dir", "state", "--config-out", "agent.toml"],
                             cwd=home, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(repo)})
        assert res.returncode == 0, res.stderr
    finally:
        srv.stop()
    cfg = load_config(home / "agent.toml", environ={})   # read from another directory (the test's cwd)
    assert cfg.state_dir == str(home / "state") and (home / "state").is_dir()
    assert 'state_dir = "/' in (home / "agent.toml").read_text()
