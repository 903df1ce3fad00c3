"""`edgefleet agent enrol` against a real fleet server: a one-time token and the device's public key
become an identity, a 0600 agent.toml and pinned root, fleet and build keys (each in its role);
a reused token, an unreachable fleet or a key list with another root is a clear error with exit
code 1."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from sqlmodel import Session

from agent.config import load_config
from agent.keys import load_private_key, load_public_key, public_key_to_b64
from fleet.ingest.broker import free_port
from fleet.models import Device
from fleet.server import FleetServer
from fleet.settings import FleetSettings

REPO = Path(__file__).resolve().parents[2]


def _enrol(fleet_url: str, token: str, state: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "enrol", "--fleet-url", fleet_url, "--token", token,
                           "--state-dir", str(state), "--config-out", str(out), *extra],
                          capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture
def server(tmp_path: Path, build_keys):  # type: ignore[no-untyped-def]
    settings = FleetSettings(data_dir=tmp_path / "fleet", mqtt_url="mqtt://127.0.0.1:1883", fleet_id="lab",
                             trusted_build_keys=[build_keys[1]], api_tokens={"op": "operator"},
                             start_rollouts=False, embedded_broker=False)
    srv = FleetServer(settings, port=0, start_ingest=False, drift_evaluator=False).start()
    yield srv
    srv.stop()


def test_agent_enrol_writes_a_working_config(server, tmp_path, build_keys) -> None:  # type: ignore[no-untyped-def]
    tok = requests.post(f"{server.url}/api/enrolment-tokens", headers={"Authorization": "Bearer op"},
                        json={"device_class": "arm64-cortex-a", "attributes": {"site": "plant-3"}}).json()["token"]
    state, out = tmp_path / "dev" / "state", tmp_path / "dev" / "agent.toml"
    port = free_port()
    res = _enrol(server.url, tok, state, out, "--device-id", "cam-7", "--attr", "region=eu",
                 "--http-port", str(port))
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600          # it holds the MQTT password
    cfg = load_config(out)
    assert (cfg.device_id, cfg.fleet_id, cfg.device_class) == ("cam-7", "lab", "arm64-cortex-a")
    assert cfg.mqtt.url == "mqtt://127.0.0.1:1883" and cfg.mqtt.username == "cam-7" and len(cfg.mqtt.password) > 20
    assert cfg.mqtt.hold_until_ingest is True   # telemetry waits for the fleet's ingest (issue 20)
    assert "hold_until_ingest = true" in out.read_text()
    assert cfg.serving.http_port == port and cfg.fleet_url == server.url
    # each key in its role: the build key verifies bundles only, the fleet key commands only
    def pinned(paths):  # type: ignore[no-untyped-def]
        return [public_key_to_b64(load_public_key(Path(p))) for p in paths]
    from fleet.registry.fleet_keys import load_fleet_key

    assert pinned(cfg.build_keys) == [public_key_to_b64(load_public_key(build_keys[1]))]         # bundles' signer
    assert pinned(cfg.trusted_keys) == [public_key_to_b64(load_fleet_key(server.settings).public_key())]  # commands'
    assert cfg.root_keys == []   # this fleet has no signed key list: no root to pin
    with Session(server.engine) as db:
        dev = db.get(Device, "cam-7")
        assert dev is not None and dev.attributes == {"site": "plant-3", "region": "eu"}
        # the fleet holds the public half of the key the device keeps in its state dir
        assert dev.public_key == public_key_to_b64(load_private_key(Path(cfg.device_key)).public_key())

    again = _enrol(server.url, tok, tmp_path / "other", tmp_path / "other.toml")
    assert again.returncode == 1 and "invalid-token" in again.stderr and not (tmp_path / "other.toml").exists()


def test_devices_are_told_the_device_mqtt_url(tmp_path, build_keys) -> None:  # type: ignore[no-untyped-def]
    """Behind TLS the devices get mqtts://public-host:8883 while the fleet uses its internal URL."""
    settings = FleetSettings(data_dir=tmp_path / "fleet", mqtt_url="mqtt://10.0.0.5:1883",
                             device_mqtt_url="mqtts://broker.example.com", api_tokens={"op": "operator"},
                             start_rollouts=False, embedded_broker=False, trusted_build_keys=[build_keys[1]])
    srv = FleetServer(settings, port=0, start_ingest=False, drift_evaluator=False).start()
    try:
        tok = requests.post(f"{srv.url}/api/enrolment-tokens", headers={"Authorization": "Bearer op"},
                            json={}).json()["token"]
        from agent.enrol import EnrolRequest, enrol

        cfg = enrol(EnrolRequest(srv.url, tok, tmp_path / "state"))
        assert cfg.mqtt.url == "mqtts://broker.example.com" and cfg.fleet_id == "default"
    finally:
        srv.stop()


def test_agent_enrol_unreachable_fleet_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    res = _enrol(f"http://127.0.0.1:{free_port()}", "enr_x", tmp_path / "s", tmp_path / "a.toml", "--retry-for", "1")
    assert res.returncode == 1 and "cannot reach fleet" in res.stderr and "attempts" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "a.toml").exists()


def test_agent_enrol_pins_the_root_and_the_signed_key_list(server, tmp_path, build_keys) -> None:  # type: ignore[no-untyped-def]
    """With a root-signed key list uploaded, enrolment pins its root (checked against
    --root-key-id when given) and the device starts at that list's version."""
    from agent.keylist import make_keylist, sign_keylist
    from agent.keys import generate_keypair, key_id
    from agent.trust import TrustStore
    from fleet.registry.fleet_keys import load_fleet_key, store_keylist

    root_priv, root_pub = generate_keypair(tmp_path / "offline", "root")
    root = load_private_key(root_priv)
    fleet_pub = load_fleet_key(server.settings).public_key()
    doc = sign_keylist(make_keylist(3, {"root": [root.public_key()], "fleet": [fleet_pub],
                                        "build": [load_public_key(build_keys[1])]}), [root])
    store_keylist(server.settings, doc, must_trust=[key_id(fleet_pub)])

    def token() -> str:
        return requests.post(f"{server.url}/api/enrolment-tokens", headers={"Authorization": "Bearer op"},
                             json={}).json()["token"]
    wrong = _enrol(server.url, token(), tmp_path / "w", tmp_path / "w.toml", "--root-key-id", "0" * 16)
    assert wrong.returncode == 1 and "not trusted" in wrong.stderr and not (tmp_path / "w.toml").exists()
    state, out = tmp_path / "d" / "state", tmp_path / "d" / "agent.toml"
    res = _enrol(server.url, token(), state, out, "--root-key-id", key_id(root))
    assert res.returncode == 0, res.stderr
    cfg = load_config(out)
    assert [key_id(load_public_key(Path(p))) for p in cfg.root_keys] == [key_id(root)]
    ts = TrustStore(state, root_keys=cfg.root_keys, fleet_keys=cfg.trusted_keys, build_keys=cfg.build_keys)
    assert ts.version == 3 and ts.ids("fleet") == [key_id(fleet_pub)]
    assert ts.ids("build") == [key_id(load_public_key(build_keys[1]))]


class _Flaky:
    """A proxy in front of the fleet: answers `status` to the first `fails` requests, then
    forwards to the real server (what a device sees while the fleet restarts or is overloaded)."""

    def __init__(self, upstream: str, status: int, fails: int) -> None:
        import http.server
        import threading
        import urllib.error
        import urllib.request

        outer = self
        self.seen: list[int] = []

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if len(outer.seen) < fails:
                    outer.seen.append(status)
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"error": {"code": "busy", "message": "try later"}}')
                    return
                req = urllib.request.Request(upstream + self.path, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=30) as resp:
                        code, data = resp.status, resp.read()
                except urllib.error.HTTPError as exc:
                    code, data = exc.code, exc.read()
                outer.seen.append(code)
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_enrolment_retries_a_fleet_that_answers_503_then_succeeds(server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Issue 20, build 2: every network call on the device retries transient failures with
    backoff and jitter; before, one 503 (a restarting fleet) failed the enrolment for good."""
    from agent.enrol import EnrolRequest, enrol

    tok = requests.post(f"{server.url}/api/enrolment-tokens", headers={"Authorization": "Bearer op"},
                        json={}).json()["token"]
    flaky = _Flaky(server.url, 503, fails=2)
    try:
        cfg = enrol(EnrolRequest(flaky.url, tok, tmp_path / "state", device_id="cam-r"))
    finally:
        flaky.close()
    assert flaky.seen == [503, 503, 201] and cfg.device_id == "cam-r"


def test_enrolment_does_not_retry_a_definite_refusal(server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A 403 (or any 4xx but 408/425/429) is the fleet's answer, not a blip: one request only."""
    from agent.enrol import EnrolError, EnrolRequest, enrol

    flaky = _Flaky(server.url, 403, fails=5)
    try:
        with pytest.raises(EnrolError, match="HTTP 403"):
            enrol(EnrolRequest(flaky.url, "enr_nope", tmp_path / "state", retry_s=60))
    finally:
        flaky.close()
    assert flaky.seen == [403]
