"""Broker outage: windows go to the on-disk outbox and arrive after the broker returns, also
across a kill -9 of the agent. Uses a private Mosquitto that the test stops and restarts."""

import time
import uuid

import pytest

from agent.keys import Keyring, load_public_key, verify_document
from tests.agent.conftest import AgentProcess, PrivateBroker, Subscriber, make_config, wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]


def _windows(sub: Subscriber, ring: Keyring) -> list[dict]:
    out = {}
    for d in sub.payloads("/telemetry"):
        p = verify_document(d, ring)
        out[p["seq"]] = p  # de-duplicate redeliveries on seq, as the fleet does
    return sorted(out.values(), key=lambda p: p["window"]["start"])


def test_outage_loses_no_window(tmp_path, fleet_keys, bundles, digits) -> None:
    conf_dir = tmp_path / "broker"
    conf_dir.mkdir()
    broker = PrivateBroker(conf_dir)
    broker.start()
    fleet = f"s{uuid.uuid4().hex[:8]}"
    sock = str(tmp_path / "a.sock")
    cfg = make_config(tmp_path / "sf", fleet_keys["pub"], device_id="sf-1", mqtt_url=broker.url,
                      fleet_id=fleet, window_s=1.0, unix_socket=sock)
    proc = AgentProcess(cfg, tmp_path / "sf.toml")
    import subprocess

    from tests.agent.conftest import PYTHON, REPO

    subprocess.run([PYTHON, "-m", "agent", "install", "--config", str(proc.config_path), str(bundles["v1"])],
                   cwd=REPO, check=True, capture_output=True, timeout=120)
    sub = Subscriber(broker.url, f"edgefleet/v1/{fleet}/#")
    proc.start()
    try:
        dev_key = load_public_key(tmp_path / "sf" / "device.pub")
        ring = Keyring.from_public_keys([dev_key])
        wait_for(lambda: len(_windows(sub, ring)) >= 2, 30, what="first windows")
        broker.stop()
        wait_for(lambda: not proc.status().get("mqtt_connected"), 20, what="agent notices the outage")
        from agent.local_server import LocalClient

        c = LocalClient(sock)
        for _ in range(20):
            c.predict({"x": digits[0][:2]})
        c.close()
        queued = proc.status().get("outbox_pending", 0)
        wait_for(lambda: proc.status().get("outbox_pending", 0) >= queued + 2, 30, what="windows queued on disk")
        kill_time = time.time()
        proc.kill()  # kill -9 while windows wait in the outbox
        broker.start()
        wait_for(sub.connected.is_set, 20, what="subscriber back")
        proc.start()  # replays the outbox from disk, oldest first
        wait_for(lambda: proc.status().get("outbox_pending") == 0 and proc.status().get("mqtt_connected"), 40,
                 what="outbox drained")
        wins = wait_for(lambda: (w := _windows(sub, ring)) and sum(p["requests"] for p in w) >= 20 and w, 30,
                        what="replayed windows")
        assert sum(p["requests"] for p in wins) == 20
        # The first process's windows are contiguous: none was lost during the outage.
        first = [p for p in wins if p["window"]["end"] <= kill_time]
        assert len(first) >= 4
        for prev, nxt in zip(first, first[1:], strict=False):
            assert abs(nxt["window"]["start"] - prev["window"]["end"]) < 1e-3
        assert all(p["dropped_windows"] == 0 for p in wins)
    finally:
        proc.stop()
        sub.close()
        broker.stop()


def test_full_outbox_drops_oldest_and_reports(agent_factory, bundles, tmp_path) -> None:
    from agent.config import MqttConfig

    a = agent_factory("drop-1")
    a.cfg.mqtt = MqttConfig(outbox_max_messages=3)
    a.outbox.max_messages = 3
    a.install(bundles["v1"])  # one event
    for _ in range(5):
        a.flush_telemetry()
    assert len(a.outbox) == 3
    assert a.outbox.dropped_windows == 3
    last = a.flush_telemetry()[0]
    assert last["dropped_windows"] == 3 + 0  # counted before this window was stored
