"""The MQTT link: 3.1.1 mode, PUBACK-driven deletion, reconnect after a broker restart."""

import json
import uuid

import pytest

from agent.config import MqttConfig
from tests.agent.conftest import BROKER_URL, Subscriber, wait_for

pytestmark = pytest.mark.mqtt


def test_mqtt_311_mode_delivers(agent_factory, bundles) -> None:
    fleet = f"p{uuid.uuid4().hex[:8]}"
    sub = Subscriber(BROKER_URL, f"edgefleet/v1/{fleet}/+/telemetry")
    try:
        a = agent_factory("v311", fleet_id=fleet)
        a.stop()  # restart with an explicit 3.1.1 link
        from agent.daemon import Agent

        cfg = a.cfg
        cfg.mqtt = MqttConfig(url=BROKER_URL, protocol="3.1.1", reconnect_min_s=1, reconnect_max_s=2)
        b = Agent(cfg).start()
        try:
            wait_for(b.link.connected.is_set, 15, what="3.1.1 connect")
            assert b.link.protocol == 4  # paho's MQTTv311
            b.install(bundles["v1"])
            b.flush_telemetry()
            wait_for(lambda: sub.payloads("/telemetry"), 15, what="telemetry over 3.1.1")
        finally:
            b.stop()
    finally:
        sub.close()


@pytest.mark.slow
def test_rows_deleted_only_after_puback(agent_factory, bundles, private_broker) -> None:
    a = agent_factory("ack-1", mqtt_url=private_broker.url)
    wait_for(a.link.connected.is_set, 15, what="connected")
    a.install(bundles["v1"])
    wait_for(lambda: len(a.outbox) == 0, 15, what="install event acked")
    private_broker.stop()
    wait_for(lambda: not a.link.connected.is_set(), 15, what="disconnect noticed")
    for _ in range(3):
        a.flush_telemetry()
    assert len(a.outbox) == 3  # nothing acknowledged, nothing deleted
    acks_before = a.link.published_acks
    private_broker.start()
    sub = Subscriber(private_broker.url, "edgefleet/v1/#")
    try:
        wait_for(lambda: a.link.connected.is_set() and len(a.outbox) == 0, 30, what="outbox drained after reconnect")
        assert a.link.published_acks - acks_before >= 3
        # the state was re-published on reconnect (delivered live or as the retained message)
        wait_for(lambda: any(t.endswith("/state") for t, p, r in sub.messages), 10, what="state")
        st = [json.loads(p) for t, p, r in sub.messages if t.endswith("/state")][-1]
        assert st["payload"]["installed"]["version"] == 1
    finally:
        sub.close()


def test_raw_samples_off_by_default_and_rate_limited(agent_factory, bundles, digits) -> None:
    from agent.config import TelemetryConfig

    a = agent_factory("raw-off")
    a.install(bundles["v1"])
    a.predict(digits[0][:5])
    assert "raw_samples" not in a.flush_telemetry()[0]
    b = agent_factory("raw-on", telemetry=TelemetryConfig(sample_rate=1.0, raw_samples=True,
                                                           raw_samples_per_window=3))
    b.install(bundles["v1"])
    for i in range(4):
        b.predict(digits[0][i * 2:i * 2 + 2])
    p = b.flush_telemetry()[0]
    assert len(p["raw_samples"]) == 3 and len(p["raw_samples"][0]["x"][0]) == 64


def test_serves_without_a_broker(agent_factory, bundles, digits) -> None:
    from tests.agent.conftest import free_port

    a = agent_factory("nobroker", mqtt_url=f"mqtt://127.0.0.1:{free_port()}")  # nothing listens there
    a.install(bundles["v1"])
    assert a.predict(digits[0][:2])["logits"].shape == (2, 10)
    a.flush_telemetry()
    st = a.status()
    assert st["mqtt_connected"] is False and st["outbox_pending"] == 2  # install event + one window kept
