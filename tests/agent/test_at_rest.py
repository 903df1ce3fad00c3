"""Issue 12, "What was seen" 8 (agent side): state on disk is private (0700/0600), the outbox
(telemetry, raw samples, events) is sealed with AES-GCM and still delivers through the real
Mosquitto, legacy plaintext rows are migrated, a wrong storage key is refused in one line, the MQTT
password is sealed in agent.toml, and production mode refuses plaintext transport to remote hosts."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from agent.config import AgentConfig, ConfigError, MqttConfig, TelemetryConfig, load_config, seal_secrets
from agent.keys import Keyring, load_private_key, sign_document, verify_document
from agent.outbox import Outbox
from agent.protocol import make_command, topic
from agent.sealed import Sealer, SealError, WrongKeyError, load_storage_key
from tests.agent.conftest import BROKER_URL, PYTHON, REPO, AgentProcess, Subscriber, make_config, wait_for


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _disk_bytes(db: Path) -> bytes:
    """The outbox as a thief would copy it: the database and its WAL/SHM side files."""
    return b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists())


# -- the sealing module -------------------------------------------------------------------------
def test_sealer_binds_key_and_purpose_and_reads_ranges(tmp_path) -> None:
    s = load_storage_key(None, tmp_path / "keys" / "storage.key", environ={})
    assert _mode(tmp_path / "keys") == 0o700 and _mode(tmp_path / "keys" / "storage.key") == 0o600
    assert load_storage_key(None, tmp_path / "keys" / "storage.key", environ={}).key_id == s.key_id  # reused
    blob = s.seal(b"secret telemetry", b"outbox/telemetry")
    assert b"secret" not in blob and s.open(blob, b"outbox/telemetry") == b"secret telemetry"
    with pytest.raises(SealError, match="another purpose"):
        s.open(blob, b"outbox/event")
    with pytest.raises(WrongKeyError, match="restore the original storage key"):
        Sealer(os.urandom(32)).open(blob, b"outbox/telemetry")
    # files: random access by segment, truncation and tampering detected
    data = os.urandom(5000)
    (tmp_path / "plain").write_bytes(data)
    assert s.seal_file(tmp_path / "plain", tmp_path / "sealed", b"sha", segment=1024) == 5000
    with s.open_file(tmp_path / "sealed", b"sha") as f:
        f.seek(1000)
        assert f.read(2000) == data[1000:3000] and f.size == 5000
    raw = (tmp_path / "sealed").read_bytes()
    (tmp_path / "sealed").write_bytes(raw[:-1])
    with pytest.raises(SealError, match="truncated"):
        s.open_file(tmp_path / "sealed", b"sha")


def test_systemd_credential_is_preferred_to_the_default_file(tmp_path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    key = os.urandom(32)
    (creds / "edgefleet-storage-key").write_bytes(key)
    s = load_storage_key(None, tmp_path / "storage.key", environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert s.key_id == Sealer(key).key_id and not (tmp_path / "storage.key").exists()
    (creds / "edgefleet-storage-key").write_text("too short\n")
    with pytest.raises(SealError, match="32 bytes"):
        load_storage_key(None, tmp_path / "storage.key", environ={"CREDENTIALS_DIRECTORY": str(creds)})


# -- the outbox ---------------------------------------------------------------------------------
@pytest.mark.mqtt
def test_outbox_on_disk_has_no_plaintext_and_delivers_through_mosquitto(tmp_path, fleet_keys, bundles,
                                                                       digits) -> None:
    """Windows with raw samples are stored while the agent is offline, then delivered."""
    from agent.daemon import Agent

    fleet = f"r{uuid.uuid4().hex[:8]}"
    device = f"vault-{uuid.uuid4().hex[:6]}"
    cfg = make_config(tmp_path / "state", fleet_keys["pub"], device_id=device, fleet_id=fleet,
                      mqtt_url=BROKER_URL)
    cfg.telemetry = TelemetryConfig(window_s=3600, sample_rate=1.0, raw_samples=True, raw_samples_per_window=3)
    a = Agent(cfg)  # not started: no broker connection yet, everything waits in the outbox
    try:
        a.lifecycle.start()
        a.install(bundles["v1"])
        a.telemetry.start()
        for row in digits[0][:8]:
            a.predict({"x": row[None, :]})
        stored = a.flush_telemetry()
        assert stored and stored[0]["raw_samples"] and stored[0]["features"]
        feature = stored[0]["features"][0]["name"]
        disk = _disk_bytes(cfg.state_path / "outbox.sqlite")
        for secret in (device.encode(), feature.encode(), b"raw_samples", b'"requests"', fleet.encode()):
            assert secret not in disk, secret
        assert len(a.outbox) >= 2  # the install event and the window
        sub = Subscriber(BROKER_URL, f"edgefleet/v1/{fleet}/{device}/telemetry")
        try:
            wait_for(sub.connected.is_set, 10, what="subscriber")
            a.telemetry.stop(flush=False)
            a.start()  # connects and forwards the sealed outbox
            ring = Keyring.from_public_keys([a.device_key.public_key()])
            got = wait_for(lambda: [verify_document(d, ring) for d in sub.payloads("/telemetry")], 30,
                           what="the stored window delivered")
            assert got[0]["device"] == device and got[0]["raw_samples"] == stored[0]["raw_samples"]
            wait_for(lambda: len(a.outbox) == 0, 20, what="outbox drained")
        finally:
            sub.close()
    finally:
        a.stop()


def test_legacy_plaintext_rows_are_read_and_sealed_in_place(tmp_path) -> None:
    db = tmp_path / "outbox.sqlite"
    old = Outbox(db)  # as an agent before encryption at rest wrote it
    for i in range(3):
        old.put("edgefleet/v1/f/legacy-device/telemetry", lambda s, i=i: f'{{"legacy-window":{i}}}'.encode())
    old.put("edgefleet/v1/f/legacy-device/events", lambda s: b'{"legacy-event":1}', kind="event")
    old.ack(old.pending()[0].id)
    old.close()
    assert b"legacy-window" in _disk_bytes(db)
    os.chmod(db, 0o644)
    sealer = Sealer(os.urandom(32))
    ob = Outbox(db, sealer=sealer)
    msgs = ob.pending()
    assert [(m.topic, m.payload, m.kind) for m in msgs] == [
        ("edgefleet/v1/f/legacy-device/telemetry", b'{"legacy-window":1}', "telemetry"),
        ("edgefleet/v1/f/legacy-device/telemetry", b'{"legacy-window":2}', "telemetry"),
        ("edgefleet/v1/f/legacy-device/events", b'{"legacy-event":1}', "event")]
    assert ob.put("t/new", lambda s: b"x") == 5  # the sequence counter survived the migration
    ob.close()
    disk = _disk_bytes(db)
    assert b"legacy-window" not in disk and b"legacy-device" not in disk and b"legacy-event" not in disk
    assert _mode(db) == 0o600


def test_a_damaged_sealed_row_is_dropped_not_blocking_the_queue(tmp_path) -> None:
    sealer = Sealer(os.urandom(32))
    ob = Outbox(tmp_path / "o.sqlite", sealer=sealer)
    ob.put("t/a", lambda s: b"first")
    ob.put("t/b", lambda s: b"second")
    first_id, blob = ob._db.execute("SELECT id, payload FROM outbox ORDER BY id LIMIT 1").fetchone()
    damaged = bytearray(blob)
    damaged[30] ^= 0xFF  # one flipped bit on disk
    ob._db.execute("UPDATE outbox SET payload = ? WHERE id = ?", (bytes(damaged), first_id))
    assert [(m.topic, m.payload) for m in ob.pending()] == [("t/b", b"second")]
    assert len(ob) == 1 and ob._meta("unreadable") == 1


def test_wrong_storage_key_is_refused_in_one_line(tmp_path, fleet_keys) -> None:
    cfg = make_config(tmp_path / "state", fleet_keys["pub"], device_id="wrong-key")
    sealer = cfg.storage_sealer()
    ob = Outbox(cfg.state_path / "outbox.sqlite", sealer=sealer)
    ob.put("t", lambda s: b'{"window": 1}')
    ob.close()
    (cfg.state_path / "storage.key").write_bytes(os.urandom(32))  # the key was lost and replaced
    path = cfg.write(tmp_path / "agent.toml")
    res = subprocess.run([PYTHON, "-m", "agent", "run", "--config", str(path)], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and "storage key" in res.stderr and "outbox" in res.stderr
    assert len(Outbox(cfg.state_path / "outbox.sqlite")._db.execute("SELECT id FROM outbox").fetchall()) == 1


# -- files and modes ----------------------------------------------------------------------------
@pytest.mark.mqtt
@pytest.mark.slow
def test_a_real_agent_writes_private_state(tmp_path, fleet_keys, bundles) -> None:
    fleet = f"m{uuid.uuid4().hex[:8]}"
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    cfg = make_config(state, fleet_keys["pub"], device_id="modes-1", fleet_id=fleet, mqtt_url=BROKER_URL,
                      window_s=1.0)
    subprocess.run([PYTHON, "-m", "agent", "install", "--config", str(cfg.write(tmp_path / "a.toml")),
                    str(bundles["v1"])], cwd=REPO, check=True, capture_output=True, timeout=120)
    proc = AgentProcess(cfg, tmp_path / "a.toml")
    sub = Subscriber(BROKER_URL, f"edgefleet/v1/{fleet}/modes-1/#")
    proc.start()
    try:
        cmd = sign_document(make_command("modes-1", 1, "telemetry-config", {"window_s": 2.0}),
                            load_private_key(fleet_keys["priv"]))
        wait_for(sub.connected.is_set, 10, what="subscriber")
        wait_for(lambda: proc.status().get("mqtt_connected"), 30, what="agent connected")
        sub.publish(topic(fleet, "modes-1", "cmd"), json.dumps(cmd).encode())
        wait_for(lambda: (state / "commands.json").exists() and (proc.status().get("last_command") or {})
                 .get("result") == "ok", 30, what="command applied")
        wait_for(lambda: sub.payloads("/telemetry"), 30, what="a window")
    finally:
        proc.stop()
        sub.close()
    assert _mode(state) == 0o700
    for name in ("outbox.sqlite", "keyring.json", "status.json", "commands.json", "storage.key", "device.key",
                 "telemetry.json"):
        assert (state / name).exists(), name
    files = [p for p in state.iterdir() if p.is_file() and p.suffix != ".pub"]  # public keys may be read
    assert {p.name: oct(_mode(p)) for p in files if _mode(p) != 0o600} == {}


# -- secrets in the config ----------------------------------------------------------------------
def test_mqtt_password_is_sealed_in_the_config_file(tmp_path, fleet_keys, caplog) -> None:
    cfg = make_config(tmp_path / "state", fleet_keys["pub"], device_id="pw-1",
                      mqtt_url="mqtt://127.0.0.1:1883")
    cfg.mqtt = MqttConfig(url="mqtt://127.0.0.1:1883", username="pw-1", password="hunter2-very-secret")
    path = seal_secrets(cfg).write(tmp_path / "agent.toml")
    text = path.read_text()
    assert "hunter2" not in text and 'password_sealed = "efs1:' in text
    assert load_config(path).mqtt.password == "hunter2-very-secret"
    # sealed for this device: the same line pasted into another device's config does not open
    other = text.replace('device_id = "pw-1"', 'device_id = "pw-2"')
    (tmp_path / "other.toml").write_text(other)
    with pytest.raises(ConfigError, match="mqtt.password_sealed"):
        load_config(tmp_path / "other.toml")
    # a plaintext password still works, with a warning
    plain = AgentConfig(device_id="pw-1", state_dir=str(tmp_path / "s2"),
                        mqtt=MqttConfig(url="mqtt://127.0.0.1:1883", password="plain-pw"))
    plain.write(tmp_path / "plain.toml")
    with caplog.at_level("WARNING"):
        assert load_config(tmp_path / "plain.toml").mqtt.password == "plain-pw"
    assert "plaintext" in caplog.text and "seal-config" in caplog.text
    # ... and `agent seal-config` seals it in place
    res = subprocess.run([PYTHON, "-m", "agent", "seal-config", "--config", str(tmp_path / "plain.toml")], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and json.loads(res.stdout)["sealed"] == ["mqtt.password"], res.stderr
    assert "plain-pw" not in (tmp_path / "plain.toml").read_text() and _mode(tmp_path / "plain.toml") == 0o600
    assert load_config(tmp_path / "plain.toml").mqtt.password == "plain-pw"
    assert _mode(tmp_path / "s2") == 0o700 and _mode(tmp_path / "s2" / "storage.key") == 0o600


# -- production transport -----------------------------------------------------------------------
@pytest.mark.parametrize(("mqtt_url", "fleet_url", "ok"), [
    ("mqtt://broker.example:1883", "", False),
    ("mqtts://broker.example:8883", "http://fleet.example:8080", False),
    ("mqtts://broker.example:8883", "https://fleet.example", True),
    ("mqtt://127.0.0.1:1883", "http://localhost:8080", True),
    ("mqtt://[::1]:1883", "", True),
])
def test_production_agent_refuses_plaintext_to_remote_hosts(tmp_path, mqtt_url, fleet_url, ok) -> None:
    over = {"device_id": "p-1", "state_dir": str(tmp_path), "production": True, "mqtt": {"url": mqtt_url},
            "fleet_url": fleet_url}
    if ok:
        load_config(None, over)
    else:
        with pytest.raises(ConfigError, match="production mode refuses"):
            load_config(None, over)
        load_config(None, {**over, "allow_insecure_transport": True})
    load_config(None, {**over, "production": False})


def test_production_refusal_is_one_line_exit_2(tmp_path) -> None:
    toml = tmp_path / "agent.toml"
    AgentConfig(device_id="p-2", state_dir=str(tmp_path / "s"), production=True,
                mqtt=MqttConfig(url="mqtt://user:s3cr3tpass@broker.example:1883")).write(toml)
    res = subprocess.run([PYTHON, "-m", "agent", "run", "--config", str(toml)], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "mqtt.url = mqtt://broker.example:1883" in res.stderr and "s3cr3tpass" not in res.stderr
    # the same with the flag instead of the config field
    AgentConfig(device_id="p-2", state_dir=str(tmp_path / "s"),
                mqtt=MqttConfig(url="mqtt://broker.example:1883")).write(toml)
    res = subprocess.run([PYTHON, "-m", "agent", "run", "--production", "--config", str(toml)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "production mode refuses mqtt.url" in res.stderr, res.stderr
