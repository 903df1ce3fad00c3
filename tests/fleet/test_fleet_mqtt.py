"""Real agents (threads with their own paho clients and device keys) report through the real
Mosquitto; the fleet's ingest subscribes; stored aggregates and drift match direct computation."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import requests
from sqlmodel import Session, select

from agent.sketches import psi
from fleet.devsim import MqttPublisher, SimDevice, enrol
from fleet.ingest.service import IngestService
from fleet.models import Aggregate, Device, TelemetryWindow
from fleet.server import FleetServer

pytestmark = pytest.mark.mqtt


def _wait(cond, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _server(fleet, broker) -> FleetServer:  # type: ignore[no-untyped-def]
    fleet.settings.mqtt_url = f"mqtt://{broker[0]}:{broker[1]}"
    return FleetServer(fleet.settings, port=0, drift_evaluator=False).start()


def _enrol_all(srv: FleetServer, devs: list[SimDevice], regions: list[str]) -> None:
    h = {"Authorization": "Bearer operator-token"}
    for d, region in zip(devs, regions, strict=True):
        tok = requests.post(f"{srv.url}/api/enrolment-tokens", headers=h, json={}, timeout=10).json()["token"]
        body = enrol(srv.url, tok, d, attributes={"region": region})
        assert body["mqtt"]["port"] == 1883 and body["mqtt"]["password"]
        assert body["topics"]["telemetry"] == d.topic("telemetry")


@pytest.mark.slow
def test_agents_report_through_mosquitto(fleet, broker, baseline) -> None:  # type: ignore[no-untyped-def]
    srv = _server(fleet, broker)
    try:
        assert srv.ingest.mqtt5, "Mosquitto 2 speaks MQTT 5: ingest should use the shared subscription"
        assert srv.ingest.topics()[0].startswith("$share/edgefleet-ingest/")
        devs = [SimDevice(f"agent-{i}", fleet=fleet.settings.fleet_id) for i in range(6)]
        regions = ["eu", "eu", "eu", "us", "us", "us"]
        _enrol_all(srv, devs, regions)
        sent: dict[str, list[dict]] = {"eu": [], "us": []}
        lock = threading.Lock()

        def agent(d: SimDevice, region: str, seed: int) -> None:
            rng = np.random.default_rng(seed)
            will = (d.topic("state"), b'{"status": "offline"}')
            pub = MqttPublisher(broker[0], broker[1], f"{fleet.settings.fleet_id}-{d.device_id}", will=will)
            inst = {"name": "digits", "version": 1, "manifest_sha256": "a" * 64, "bundle_sha256": "b" * 64}
            pub.publish(d.topic("state"), d.sign(d.state(installed=inst)), retain=True)
            for w in range(3):
                p = d.telemetry(rng, baseline, window_start=1000.0 + 60 * w, n=400,
                                shift=0.5 if region == "us" else 0.0)
                raw = d.sign(p)
                pub.publish(d.topic("telemetry"), raw)
                if w == 1:
                    pub.publish(d.topic("telemetry"), raw)  # redelivery of the same (device, seq)
                with lock:
                    sent[region].append(p)
            pub.publish(d.topic("telemetry"), b'{"broken": ')  # malformed
            pub.close()

        threads = [threading.Thread(target=agent, args=(d, r, i)) for i, (d, r) in enumerate(zip(devs, regions,
                                                                                               strict=True))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        stats = srv.ingest.stats
        _wait(lambda: stats.snapshot()["stored"].get("telemetry", 0) == 18
              and stats.snapshot()["dropped"].get("malformed", 0) == 6
              and stats.snapshot()["duplicates"].get("telemetry", 0) == 6
              and stats.snapshot()["stored"].get("state", 0) >= 6)
        with Session(srv.engine) as db:
            assert len(db.exec(select(TelemetryWindow)).all()) == 18
            for d in db.exec(select(Device)):
                assert d.installed_version == 1 and d.last_seen is not None
            aggs = list(db.exec(select(Aggregate)))
        for region in ("eu", "us"):
            mine = [a for a in aggs if a.cohort == f"region={region}"]
            assert sum(a.n_windows for a in mine) == 9
            for j in range(len(baseline["features"])):
                got = np.sum([a.payload["features"][j]["counts"] for a in mine], axis=0)
                want = np.sum([p["features"][j]["counts"] for p in sent[region]], axis=0)
                assert got.tolist() == want.tolist()
        # drift over the API equals PSI computed directly from the same data
        r = requests.get(f"{srv.url}/api/models/digits/versions/1/drift", headers={"Authorization":
                         "Bearer viewer-token"}, params={"cohort": "region=us"}, timeout=10)
        assert r.status_code == 404 and r.json()["error"]["code"] == "no-reference"  # no bundle uploaded yet
        from fleet.drift.engine import compare

        rep = compare(sent["us"], baseline, fleet.settings)
        direct = psi(np.asarray(baseline["features"][0]["counts"]),
                     np.sum([p["features"][0]["counts"] for p in sent["us"]], axis=0), fleet.settings.drift.eps)
        assert rep.features[0].psi == pytest.approx(direct, abs=1e-6)
        assert rep.level == "alert" and compare(sent["eu"], baseline, fleet.settings).level == "ok"
        # metrics endpoint shows the counts
        text = requests.get(f"{srv.url}/metrics", timeout=10).text
        assert 'edgefleet_ingest_dropped_total{reason="malformed"}' in text
    finally:
        srv.stop()


@pytest.mark.slow
def test_decommissioned_device_is_dropped_as_unknown(fleet, broker, baseline) -> None:  # type: ignore[no-untyped-def]
    rollouts = pytest.importorskip("fleet.rollouts.evaluator")
    fleet.settings.start_rollouts = True  # `serve` also runs the rollout evaluator beside ingest
    srv = _server(fleet, broker)
    try:
        assert isinstance(srv.rollout_evaluator, rollouts.Evaluator)
        assert srv.app.extensions["edgefleet"].extras["rollout_evaluator"] is srv.rollout_evaluator
        d = SimDevice("retiree", fleet=fleet.settings.fleet_id)
        _enrol_all(srv, [d], ["eu"])
        rng = np.random.default_rng(0)
        pub = MqttPublisher(broker[0], broker[1], f"{fleet.settings.fleet_id}-retiree")
        pub.publish(d.topic("telemetry"), d.sign(d.telemetry(rng, baseline)))
        pub.flush()
        _wait(lambda: srv.ingest.stats.snapshot()["stored"].get("telemetry", 0) == 1)
        r = requests.post(f"{srv.url}/api/devices/retiree/decommission",
                          headers={"Authorization": "Bearer operator-token"}, timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "decommissioned"
        pub.publish(d.topic("telemetry"), d.sign(d.telemetry(rng, baseline)))
        pub.close()
        _wait(lambda: srv.ingest.stats.snapshot()["dropped"].get("unknown-device", 0) == 1)
        assert srv.ingest.stats.snapshot()["stored"]["telemetry"] == 1
    finally:
        srv.stop()


@pytest.mark.slow
def test_two_ingest_processes_split_a_shared_subscription(fleet, broker, baseline) -> None:  # type: ignore[no-untyped-def]
    fleet.settings.mqtt_url = f"mqtt://{broker[0]}:{broker[1]}"
    fleet.settings.ingest.shared_group = f"g{fleet.settings.fleet_id}"
    a = IngestService(fleet.settings, fleet.ctx.engine).start()
    b = IngestService(fleet.settings, fleet.ctx.engine).start()
    try:
        from fleet.registry.enrolment import create_enrolment_token
        from fleet.registry.enrolment import enrol as enrol_db

        devs = [SimDevice(f"s{i}", fleet=fleet.settings.fleet_id) for i in range(10)]
        for d in devs:
            with fleet.ctx.session() as db:
                tok, _ = create_enrolment_token(db, "t")
            with fleet.ctx.session() as db:
                enrol_db(db, fleet.settings, tok, d.public_key_b64, device_id=d.device_id)
        rng = np.random.default_rng(1)
        pub = MqttPublisher(broker[0], broker[1], f"{fleet.settings.fleet_id}-pub")
        for w in range(10):
            for d in devs:
                pub.publish(d.topic("telemetry"), d.sign(d.telemetry(rng, baseline, window_start=60.0 * w, n=50)))
        pub.close()

        def total() -> int:
            return sum(s.stats.snapshot()["stored"].get("telemetry", 0) for s in (a, b))

        _wait(lambda: total() == 100)
        sa, sb = a.stats.snapshot(), b.stats.snapshot()
        assert sa["received"]["telemetry"] > 0 and sb["received"]["telemetry"] > 0  # the load was split
        assert sa["received"]["telemetry"] + sb["received"]["telemetry"] == 100  # each message once
        with Session(fleet.ctx.engine) as db:
            aggs = db.exec(select(Aggregate)).all()
            assert sum(x.n_windows for x in aggs) == 100 and len(aggs) == 10
    finally:
        a.stop()
        b.stop()
