"""Telemetry, state and Last Will through the real Mosquitto at 127.0.0.1:1883."""

import json
import uuid

import numpy as np
import pytest

from agent.keys import Keyring, verify_document
from agent.protocol import validate_telemetry
from agent.sketches import LatencyHistogram, edges_hash
from agent.spec_check import InputError
from tests.agent.conftest import BROKER_URL, AgentProcess, Subscriber, make_config, wait_for

pytestmark = pytest.mark.mqtt


def _verified(sub: Subscriber, suffix: str, keyring: Keyring) -> list[dict]:
    return [verify_document(d, keyring) for d in sub.payloads(suffix) if "signature" in d]


def test_telemetry_matches_requests_served(agent_factory, bundles, digits) -> None:
    fleet = f"t{uuid.uuid4().hex[:8]}"
    sub = Subscriber(BROKER_URL, f"edgefleet/v1/{fleet}/#")
    try:
        a = agent_factory("tel-1", mqtt_url=BROKER_URL, fleet_id=fleet, sample_rate=1.0)
        wait_for(a.link.connected.is_set, 15, what="agent connected")
        a.install(bundles["v1"])
        ring = Keyring.from_public_keys([a.device_key.public_key()])
        x = digits[0]
        sizes = [1, 3, 5, 8, 13]
        for n in sizes:
            a.predict(x[:n])
        with pytest.raises(InputError):
            a.predict(np.zeros((1, 2), np.float32))
        a.flush_telemetry()
        tel = wait_for(lambda: [p for p in _verified(sub, "/telemetry", ring) if p["requests"]], 15,
                       what="telemetry window")
        p = tel[0]
        validate_telemetry(p)
        assert p["device"] == "tel-1" and p["fleet"] == fleet and p["model"]["version"] == 1
        assert p["model"]["role"] == "active" and p["requests"] == len(sizes) + 1
        assert p["errors"] == {"invalid_input": 1, "runtime": 0}
        assert LatencyHistogram.from_dict(p["latency_us"]).total == len(sizes)
        assert p["sampled"] == sum(sizes)
        base = a.predictor.active.manifest["drift_baseline"]
        assert [f["name"] for f in p["features"]] == [f["name"] for f in base["features"]]
        for f, bf in zip(p["features"], base["features"], strict=True):
            assert f["edges_hash"] == edges_hash(bf["edges"]) and sum(f["counts"]) == sum(sizes)
        preds = np.concatenate([a.predictor.active.run({"x": x[:n]})[0].argmax(1) for n in sizes])
        assert p["prediction"]["counts"] == np.bincount(preds, minlength=10).tolist()
        assert p["window"]["end"] > p["window"]["start"] and p["dropped_windows"] == 0
        states = _verified(sub, "/state", ring)
        assert states and states[-1]["installed"]["version"] == 1 and states[-1]["status"] == "online"
        events = _verified(sub, "/events", ring)
        assert [e["kind"] for e in events] == ["install-ok"]
        seqs = [m["seq"] for m in _verified(sub, "", ring) if "seq" in m]
        assert len(seqs) == len(set(seqs))
    finally:
        sub.close()


@pytest.mark.slow
def test_last_will_on_kill(tmp_path, fleet_keys) -> None:
    fleet = f"w{uuid.uuid4().hex[:8]}"
    sub = Subscriber(BROKER_URL, f"edgefleet/v1/{fleet}/+/state")
    cfg = make_config(tmp_path / "lw", fleet_keys["pub"], device_id="lw-1", mqtt_url=BROKER_URL, fleet_id=fleet)
    proc = AgentProcess(cfg, tmp_path / "lw.toml").start()
    try:
        wait_for(lambda: proc.status().get("mqtt_connected"), 20, what="agent connected")
        wait_for(lambda: any(d.get("payload", {}).get("status") == "online" for d in sub.payloads("/state")), 10,
                 what="online state")
        proc.kill()
        wait_for(lambda: {"status": "offline"} in sub.payloads("/state"), 20, what="last will")
    finally:
        proc.kill()
        sub.close()
        # clear the retained message we caused
        import paho.mqtt.publish as publish

        publish.single(f"edgefleet/v1/{fleet}/lw-1/state", b"", retain=True, hostname="127.0.0.1")


def test_state_is_retained(agent_factory, bundles) -> None:
    fleet = f"r{uuid.uuid4().hex[:8]}"
    a = agent_factory("ret-1", mqtt_url=BROKER_URL, fleet_id=fleet)
    wait_for(a.link.connected.is_set, 15, what="agent connected")
    a.install(bundles["v1"])
    sub = Subscriber(BROKER_URL, f"edgefleet/v1/{fleet}/+/state")  # subscribes after the fact
    try:
        msgs = wait_for(lambda: [json.loads(p) for t, p, r in sub.messages if r], 10, what="retained state")
        assert msgs[-1]["payload"]["installed"]["version"] == 1
    finally:
        sub.close()
        import paho.mqtt.publish as publish

        publish.single(f"edgefleet/v1/{fleet}/ret-1/state", b"", retain=True, hostname="127.0.0.1")
