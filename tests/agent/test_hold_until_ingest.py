"""Issue 20, seen 4: telemetry across a broker restart. Mosquitto restores neither shared
subscriptions nor (here, without persistence) any session, so windows a device flushes after
reconnecting and before ingest has resubscribed went to nobody. With `mqtt.hold_until_ingest` the
agent drains its outbox only while an ingest worker's retained status says online: it holds its
backlog while no ingest is there and delivers all of it once one is.

Real agents (in process), the fleet's real IngestService on SQLite, a private mosquitto the test
stops and starts; a second agent without the setting shows what was lost before."""

import time
import uuid

import pytest
from sqlmodel import Session, select

from agent.config import MqttConfig
from agent.keys import public_key_to_b64
from fleet.db import init_db, make_engine
from fleet.ingest.service import IngestService
from fleet.models import Device, TelemetryWindow
from fleet.settings import FleetSettings
from tests.agent.conftest import PrivateBroker, Subscriber, wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]


def _record_windows(agent) -> list[int]:
    """The telemetry seqs this agent put in its outbox (what must reach the database)."""
    seqs: list[int] = []
    put = agent.outbox.put

    def recording(topic, build, kind="telemetry", retain=False):
        seq = put(topic, build, kind=kind, retain=retain)
        if kind == "telemetry":
            seqs.append(seq)
        return seq
    agent.outbox.put = recording
    return seqs


def _stored(engine, device_id: str) -> set[int]:
    with Session(engine) as s:
        return {int(q) for q in s.exec(select(TelemetryWindow.seq).where(TelemetryWindow.device_id == device_id))}


def test_devices_hold_telemetry_until_ingest_is_online_across_a_broker_restart(agent_factory, bundles,
                                                                               tmp_path) -> None:
    (tmp_path / "broker").mkdir()
    broker = PrivateBroker(tmp_path / "broker").start()
    fleet = f"h{uuid.uuid4().hex[:8]}"
    settings = FleetSettings(data_dir=tmp_path / "fleet", mqtt_url=broker.url, fleet_id=fleet, embedded_broker=False)
    engine = make_engine(None, data_dir=settings.data_dir)
    init_db(engine)

    def mqtt(hold: bool) -> MqttConfig:
        return MqttConfig(url=broker.url, reconnect_min_s=0.5, reconnect_max_s=1, hold_until_ingest=hold)

    held = agent_factory("hold-1", mqtt=mqtt(True), fleet_id=fleet, window_s=0.25)
    plain = agent_factory("plain-1", mqtt=mqtt(False), fleet_id=fleet, window_s=0.25)
    seqs = {a.cfg.device_id: _record_windows(a) for a in (held, plain)}
    with Session(engine) as s:
        for a in (held, plain):
            s.add(Device(id=a.cfg.device_id, fleet=fleet, device_class=a.device_class.name,
                         public_key=public_key_to_b64(a.device_key.public_key())))
        s.commit()
    seen = Subscriber(broker.url, f"edgefleet/v1/{fleet}/+/telemetry")
    ingest: IngestService | None = None
    try:
        for a in (held, plain):
            a.install(bundles["v1"])
        wait_for(lambda: held.link.connected.is_set() and plain.link.connected.is_set(), 15, what="agents connected")

        # 1. no ingest online: the held device keeps its windows in the outbox, the other sends
        wait_for(lambda: len(seqs["hold-1"]) >= 4 and seen.payloads("/telemetry"), 20, what="windows made")
        assert not any(d["payload"]["device"] == "hold-1" for d in seen.payloads("/telemetry"))
        assert len(held.outbox) >= 4 and held.status()["outbox_pending"] >= 4
        assert not held.link.may_drain() and plain.link.may_drain()

        # 2. ingest comes: it announces itself once subscribed, and the backlog arrives whole
        ingest = IngestService(settings, engine).start()
        wait_for(lambda: set(seqs["hold-1"][:8]) <= _stored(engine, "hold-1"), 30, what="backlog delivered")
        assert held.link.may_drain()

        # 3. the broker restarts (no persistence: no retained status, no sessions, no shared
        # subscription) and ingest is back only seconds after the devices
        broker.stop()
        ingest.stop()
        ingest = None
        before = {d: len(s) for d, s in seqs.items()}
        broker.start()
        wait_for(lambda: held.link.connected.is_set() and plain.link.connected.is_set(), 15, what="reconnected")
        wait_for(lambda: all(len(seqs[d]) >= before[d] + 6 for d in seqs), 20, what="windows after the restart")
        assert not held.link.may_drain() and plain.link.may_drain()
        ingest = IngestService(settings, engine).start()

        made = {d: list(s) for d, s in seqs.items()}
        wait_for(lambda: set(made["hold-1"]) <= _stored(engine, "hold-1"), 30, what="held windows stored")
        wait_for(lambda: len(held.outbox) == 0 or set(seqs["hold-1"][:-2]) <= _stored(engine, "hold-1"), 10,
                 what="outbox drained")
        assert set(made["hold-1"]) - _stored(engine, "hold-1") == set()          # 0 windows lost
        assert held.outbox.dropped_windows == 0
        # without the setting, what was flushed before ingest resubscribed is gone
        time.sleep(1.0)
        assert set(made["plain-1"]) - _stored(engine, "plain-1"), "the plain agent lost nothing: no gap tested"
    finally:
        seen.close()
        if ingest is not None:
            ingest.stop()
        broker.stop()
        engine.dispose()


def test_ingest_status_retained_online_then_offline_by_its_last_will(private_broker, tmp_path) -> None:
    """The status devices wait for: retained online once ingest has subscribed; a graceful stop
    clears it; a crash leaves the Last Will (offline)."""
    import json

    from agent.protocol import ingest_status_topic

    fleet = f"s{uuid.uuid4().hex[:8]}"
    settings = FleetSettings(data_dir=tmp_path / "fleet", mqtt_url=private_broker.url, fleet_id=fleet,
                             embedded_broker=False)
    engine = make_engine(None, data_dir=settings.data_dir)
    init_db(engine)
    svc = IngestService(settings, engine).start()
    watch = Subscriber(private_broker.url, ingest_status_topic(fleet))
    try:
        wait_for(lambda: watch.payloads("/status"), 10, what="retained status")
        topic = ingest_status_topic(fleet, svc.client_id)
        assert json.loads(watch.messages[-1][1])["status"] == "online" and watch.messages[-1][0] == topic
        svc._client.loop_stop()        # a crash: the connection dies without DISCONNECT,
        svc._client.socket().close()   # so the broker publishes the Last Will
        wait_for(lambda: json.loads(watch.messages[-1][1] or b"{}").get("status") == "offline", 15,
                 what="last will")
    finally:
        watch.close()
        try:
            svc.stop()
        except OSError:
            pass
        engine.dispose()
