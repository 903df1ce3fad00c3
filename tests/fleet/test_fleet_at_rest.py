"""Issue 12, "What was seen" 8 (fleet side): the data dir is 0700, fleet.db and the artifact store
0600, artifacts are sealed with AES-GCM on disk yet served byte-exact (with ranges), artifacts an
older fleet stored in plaintext are sealed on first serve, a wrong storage key is a clear 503, and
`fleet serve --production` refuses plaintext MQTT/HTTP to remote hosts (exit 2, one line)."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from agent.sealed import is_sealed_file
from fleet.catalogue.artifact_store import storage_key_path
from fleet.ingest.broker import free_port
from fleet.server import FleetServer
from fleet.settings import FleetSettings

REPO = Path(__file__).resolve().parents[2]


def make_bundle(out: Path, key, *, version: int, baseline=None, payload_bytes: bytes | None = None) -> Path:  # type: ignore[no-untyped-def]
    """A signed bundle with a stand-in payload (the fleet never runs the model)."""
    from agent.bundle import build_bundle

    model = out.with_suffix(".model.bin")
    model.write_bytes(payload_bytes or b"ONNX-STANDIN" + bytes([version]) * 64)
    build_bundle(out, {"model.onnx": model}, {
        "model": {"name": "sealed", "version": version, "device_class": "x86-64-generic", "format": "onnx",
                  "precision": "fp32"},
        "entrypoint": "model.onnx",
        "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 8]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 10]}],
        **({"drift_baseline": baseline} if baseline else {})}, key)
    return out


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def server(tmp_path: Path, build_keys):  # type: ignore[no-untyped-def]
    data = tmp_path / "fleet"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)  # as an older fleet left it: tightened at start
    settings = FleetSettings(data_dir=data, fleet_id="rest", trusted_build_keys=[build_keys[1]],
                             api_tokens={"op": "operator"}, start_rollouts=False, embedded_broker=False,
                             drift_interval_s=0)
    srv = FleetServer(settings, port=0, start_ingest=False, drift_evaluator=False).start()
    yield srv
    srv.stop()


def _upload(srv: FleetServer, bundle: Path) -> dict:
    r = requests.post(f"{srv.url}/api/models", headers={"Authorization": "Bearer op",
                                                          "Content-Type": "application/octet-stream"},
                      data=bundle.read_bytes(), timeout=30)
    assert r.status_code == 201, r.text
    return r.json()


def test_artifacts_are_sealed_on_disk_and_served_exactly(server, build_keys, baseline, tmp_path) -> None:
    payload = b"PLAINTEXT-MODEL-WEIGHTS-" * 4000  # ~96 KB: several segments would be needed at 1 KiB
    make_bundle(tmp_path / "b.tar", build_keys[0], version=1, baseline=baseline, payload_bytes=payload)
    data = (tmp_path / "b.tar").read_bytes()
    mv = _upload(server, tmp_path / "b.tar")
    sha = mv["bundle_sha256"]
    assert sha == hashlib.sha256(data).hexdigest() and mv["size"] == len(data)
    stored = server.settings.artifacts_dir / sha
    on_disk = stored.read_bytes()
    assert on_disk != data and b"PLAINTEXT-MODEL-WEIGHTS" not in on_disk and b"manifest.json" not in on_disk
    assert is_sealed_file(stored)
    # served byte-exact, with ranges and the digest as ETag
    full = requests.get(f"{server.url}/artifacts/{sha}", timeout=30)
    assert full.status_code == 200 and full.content == data and hashlib.sha256(full.content).hexdigest() == sha
    assert full.headers["ETag"].strip('"') == sha and full.headers["Accept-Ranges"] == "bytes"
    part = requests.get(f"{server.url}/artifacts/{sha}", headers={"Range": "bytes=1000-70999"}, timeout=30)
    assert part.status_code == 206 and part.content == data[1000:71000]
    assert part.headers["Content-Range"] == f"bytes 1000-70999/{len(data)}"
    assert requests.get(f"{server.url}/artifacts/{sha}", headers={"Range": f"bytes={len(data) + 5}-"},
                        timeout=30).status_code == 416
    assert requests.get(f"{server.url}/artifacts/{sha}", headers={"If-None-Match": f'"{sha}"'},
                        timeout=30).status_code == 304
    # private on disk: data dir, database, artifact store, storage key
    s = server.settings
    assert _mode(s.data_dir) == 0o700 and _mode(s.data_dir / "fleet.db") == 0o600
    assert _mode(s.artifacts_dir) == 0o700 and _mode(stored) == 0o600
    assert _mode(storage_key_path(s)) == 0o600
    for side in ("fleet.db-wal", "fleet.db-shm"):
        if (s.data_dir / side).exists():
            assert _mode(s.data_dir / side) == 0o600, side


def test_legacy_plaintext_artifact_is_served_then_sealed(server, build_keys, baseline, tmp_path) -> None:
    make_bundle(tmp_path / "b.tar", build_keys[0], version=2, baseline=baseline)
    mv = _upload(server, tmp_path / "b.tar")
    sha, data = mv["bundle_sha256"], (tmp_path / "b.tar").read_bytes()
    stored = server.settings.artifacts_dir / sha
    stored.write_bytes(data)  # as a fleet before encryption at rest stored it
    got = requests.get(f"{server.url}/artifacts/{sha}", timeout=30)
    assert got.status_code == 200 and got.content == data
    assert is_sealed_file(stored) and stored.read_bytes() != data
    assert requests.get(f"{server.url}/artifacts/{sha}", timeout=30).content == data


def test_wrong_storage_key_is_a_clear_503(server, build_keys, baseline, tmp_path) -> None:
    make_bundle(tmp_path / "b.tar", build_keys[0], version=3, baseline=baseline)
    mv = _upload(server, tmp_path / "b.tar")
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    server.settings.storage_key_file = other  # the fleet restarted with another key
    r = requests.get(f"{server.url}/artifacts/{mv['bundle_sha256']}", timeout=30)
    assert r.status_code == 503 and r.json()["error"]["code"] == "artifact-unreadable"
    assert "storage key" in r.json()["error"]["message"]


def test_enrol_writes_the_mqtt_password_sealed(server, tmp_path) -> None:
    from agent.config import load_config

    tok = requests.post(f"{server.url}/api/enrolment-tokens", headers={"Authorization": "Bearer op"}, json={},
                        timeout=30).json()["token"]
    state, out = tmp_path / "dev" / "state", tmp_path / "dev" / "agent.toml"
    res = subprocess.run([sys.executable, "-m", "agent", "enrol", "--fleet-url", server.url, "--token", tok,
                          "--state-dir", str(state), "--config-out", str(out), "--device-id", "sealed-1"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    cfg = load_config(out)
    assert len(cfg.mqtt.password) > 20 and cfg.mqtt.password not in out.read_text()
    assert 'password_sealed = "efs1:' in out.read_text() and "\npassword = " not in out.read_text()
    assert _mode(out) == 0o600 and _mode(state) == 0o700 and _mode(state / "storage.key") == 0o600


# -- production transport -----------------------------------------------------------------------
def _serve(tmp_path: Path, *args: str, env: dict[str, str]) -> subprocess.Popen:
    conf = tmp_path / "fleet.toml"  # no background MQTT work: these tests are about the start-up check
    conf.write_text("[fleet]\nstart_rollouts = false\ndrift_interval_s = 0\n")
    env = {"EDGEFLEET_FLEET_CONFIG": str(conf), **env}
    return subprocess.Popen([sys.executable, "-m", "fleet", "--data-dir", str(tmp_path / "fd"), "serve", "--production",
                             "--no-ingest", "--port", str(free_port()), *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO), **env})


@pytest.mark.parametrize(("env", "needle"), [
    ({"MQTT_URL": "mqtt://user:s3cret@broker.example:1883"}, "mqtt_url = mqtt://broker.example:1883"),
    ({"MQTT_URL": "mqtts://broker.example:8883", "EDGEFLEET_PUBLIC_URL": "http://fleet.example:8080"},
     "public_url = http://fleet.example:8080"),
    ({"MQTT_URL": "mqtt://127.0.0.1:1883", "EDGEFLEET_DEVICE_MQTT_URL": "mqtt://10.0.0.5:1883"},
     "device_mqtt_url = mqtt://10.0.0.5:1883"),
])
def test_production_refuses_plaintext_to_remote_hosts(tmp_path, env, needle) -> None:
    p = _serve(tmp_path, env=env)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2, (out, err)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], err
    assert "Traceback" not in err and "s3cret" not in err


@pytest.mark.slow
@pytest.mark.parametrize("env", [
    {"MQTT_URL": "mqtt://127.0.0.1:1883"},  # loopback
    {"MQTT_URL": "mqtts://broker.example:8883", "EDGEFLEET_PUBLIC_URL": "https://fleet.example"},
])
def test_production_accepts_tls_and_loopback(tmp_path, env) -> None:
    p = _serve(tmp_path, env=env)
    try:
        line = p.stdout.readline() if p.stdout else ""
        assert "EdgeFleet fleet manager on" in line, p.stderr.read() if p.returncode is not None and p.stderr else line
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()


@pytest.mark.slow
def test_production_insecure_transport_when_explicitly_allowed(tmp_path) -> None:
    p = _serve(tmp_path, "--allow-insecure-transport", env={"MQTT_URL": "mqtt://broker.example:1883"})
    try:
        line = p.stdout.readline() if p.stdout else ""
        assert "EdgeFleet fleet manager on" in line
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
