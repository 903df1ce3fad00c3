"""Ingest verification and storage without MQTT: idempotence, drops by reason, aggregates, state."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlmodel import Session, select

from agent.canonical import canonical_json
from agent.keys import sign_document
from agent.protocol import MAX_MESSAGE_BYTES
from fleet.devsim import SimDevice
from fleet.ingest import aggregate
from fleet.ingest.store import Processor
from fleet.models import Aggregate, AuditEntry, Device, DeviceEvent, TelemetryWindow
from fleet.registry.enrolment import create_enrolment_token, decommission, enrol


def _enrol(fleet, dev: SimDevice, attributes=None) -> None:  # type: ignore[no-untyped-def]
    dev.fleet = fleet.settings.fleet_id
    with fleet.ctx.session() as db:
        tok, _ = create_enrolment_token(db, "test")
    with fleet.ctx.session() as db:
        enrol(db, fleet.settings, tok, dev.public_key_b64, device_id=dev.device_id, device_class=dev.device_class,
              attributes=attributes or {"region": "eu"})


def test_redelivery_counts_once_and_aggregates_equal_direct_sums(fleet, baseline) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    devs = [SimDevice(f"d{i}") for i in range(4)]
    for i, d in enumerate(devs):
        _enrol(fleet, d, {"region": "eu" if i % 2 else "us"})
    proc = Processor(fleet.settings, fleet.ctx.engine)
    payloads = [d.telemetry(rng, baseline, window_start=1000.0, errors=i) for i, d in enumerate(devs)]
    msgs = [(d.topic("telemetry"), d.sign(p)) for d, p in zip(devs, payloads, strict=True)]
    proc.process(msgs)
    proc.process(msgs[:2])          # redelivered in a later batch
    proc.process(msgs[2:] + msgs[2:])  # and twice within one batch
    snap = proc.stats.snapshot()
    assert snap["stored"]["telemetry"] == 4
    assert snap["duplicates"]["telemetry"] == 6
    with Session(fleet.ctx.engine) as db:
        assert len(db.exec(select(TelemetryWindow)).all()) == 4
        aggs = {a.cohort: a for a in db.exec(select(Aggregate))}
    assert set(aggs) == {"region=eu", "region=us"}
    for cohort, agg in aggs.items():
        members = [p for i, p in enumerate(payloads) if ("region=eu" if i % 2 else "region=us") == cohort]
        assert agg.n_windows == len(members)
        assert agg.requests == sum(p["requests"] for p in members)
        assert agg.errors == sum(sum(p["errors"].values()) for p in members)
        for j, f in enumerate(agg.payload["features"]):
            assert f["counts"] == list(np.sum([p["features"][j]["counts"] for p in members], axis=0))
        assert agg.payload["prediction"]["counts"] == list(np.sum([p["prediction"]["counts"] for p in members],
                                                                  axis=0))


def test_bad_messages_are_counted_and_dropped(fleet, baseline) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(4)
    good, stranger, gone = SimDevice("good"), SimDevice("stranger"), SimDevice("gone")
    _enrol(fleet, good)
    _enrol(fleet, gone)
    stranger.fleet = fleet.settings.fleet_id
    with fleet.ctx.session() as db:
        decommission(db, "gone", "test")
    proc = Processor(fleet.settings, fleet.ctx.engine)
    p = good.telemetry(rng, baseline)
    tampered = json.loads(good.sign(p))
    tampered["payload"]["requests"] += 1
    missing = dict(good.telemetry(rng, baseline))
    del missing["window"]
    wrong_types = good.telemetry(rng, baseline)
    wrong_types["features"][0]["counts"] = ["x"]
    other_device = good.telemetry(rng, baseline)
    other_device["device"] = "someone-else"
    msgs = [
        (good.topic("telemetry"), b"{not json"),
        (good.topic("telemetry"), b"[1, 2]"),
        (good.topic("telemetry"), b" " * (MAX_MESSAGE_BYTES + 1)),
        (good.topic("telemetry"), canonical_json(tampered)),
        (good.topic("telemetry"), good.sign(p, key=stranger.key)),        # signed by another key
        (good.topic("telemetry"), canonical_json({"payload": p})),          # unsigned
        (good.topic("telemetry"), good.sign(missing)),
        (good.topic("telemetry"), good.sign(wrong_types)),
        (good.topic("telemetry"), good.sign(other_device)),
        (stranger.topic("telemetry"), stranger.sign(stranger.telemetry(rng, baseline))),
        (SimDevice("gone", key=stranger.key, fleet=fleet.settings.fleet_id).topic("telemetry"),
         stranger.sign(stranger.telemetry(rng, baseline))),
        ("edgefleet/v1/otherfleet/good/telemetry", good.sign(p)),
        ("not/ours", b"{}"),
        (good.topic("telemetry"), good.sign(p)),  # the one good message
    ]
    proc.process(msgs)
    snap = proc.stats.snapshot()
    assert snap["stored"]["telemetry"] == 1
    assert snap["dropped"] == {"malformed": 5, "oversized": 1, "bad-signature": 3, "device-mismatch": 1,
                               "unknown-device": 2, "wrong-fleet": 1}


def test_state_sets_installed_from_signed_state_only_forward(fleet) -> None:  # type: ignore[no-untyped-def]
    dev = SimDevice("s1")
    _enrol(fleet, dev)
    proc = Processor(fleet.settings, fleet.ctx.engine)
    inst2 = {"name": "digits", "version": 2, "manifest_sha256": "a" * 64, "bundle_sha256": "b" * 64}
    inst3 = {**inst2, "version": 3}
    s_old = dev.state(installed=inst2)
    s_new = dev.state(installed=inst3, previous=inst2)
    proc.process([(dev.topic("state"), dev.sign(s_new))])
    proc.process([(dev.topic("state"), dev.sign(s_old))])  # older seq arrives late: ignored
    forged = dev.state(installed={**inst3, "version": 9})
    proc.process([(dev.topic("state"), dev.sign(forged, key=SimDevice("x").key))])
    with Session(fleet.ctx.engine) as db:
        d = db.get(Device, "s1")
        assert (d.installed_name, d.installed_version, d.previous_version) == ("digits", 3, 2)
        assert d.state_seq == s_new["seq"] and d.online is True
        assert db.exec(select(AuditEntry).where(AuditEntry.action == "device.installed")).first() is not None
    proc.process([(dev.topic("state"), b'{"status": "offline"}')])  # Last Will (unsigned)
    with Session(fleet.ctx.engine) as db:
        d = db.get(Device, "s1")
        assert d.online is False and d.installed_version == 3
    assert proc.stats.snapshot()["dropped"] == {"bad-signature": 1}


def test_events_are_stored_once_and_audited(fleet) -> None:  # type: ignore[no-untyped-def]
    dev = SimDevice("e1")
    _enrol(fleet, dev)
    proc = Processor(fleet.settings, fleet.ctx.engine)
    ev = dev.event("install-failed", command_id="c1", reason="hash-mismatch")
    raw = dev.sign(ev)
    proc.process([(dev.topic("events"), raw), (dev.topic("events"), raw)])
    proc.process([(dev.topic("events"), raw)])
    with Session(fleet.ctx.engine) as db:
        rows = db.exec(select(DeviceEvent)).all()
        assert [(r.kind, r.command_id, r.reason) for r in rows] == [("install-failed", "c1", "hash-mismatch")]
        audits = db.exec(select(AuditEntry).where(AuditEntry.action == "event.install-failed")).all()
        assert len(audits) == 1 and audits[0].actor == "device:e1" and audits[0].target == "device:e1"
        assert audits[0].after == {"seq": ev["seq"], "command_id": "c1", "reason": "hash-mismatch", "details": {}}
        assert audits[0].before is None and audits[0].at > 0


def test_cohort_labels() -> None:
    assert aggregate.cohort_of({"region": "eu", "site": "a"}, ["region"]) == "region=eu"
    assert aggregate.cohort_of({"region": "eu", "site": "a"}, ["region", "site"]) == "region=eu,site=a"
    assert aggregate.cohort_of({}, ["region"]) == "all"
    assert aggregate.cohort_of({"cohort": "canary"}, ["region"]) == "canary"


@pytest.mark.parametrize("n", [1, 7])
def test_merge_all_is_exact_addition(baseline, n) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(n)
    devs = [SimDevice(f"m{i}") for i in range(n)]
    ps = [d.telemetry(rng, baseline) for d in devs]
    merged = aggregate.merge_all(ps)
    assert merged["requests"] == sum(p["requests"] for p in ps)
    for j in range(len(baseline["features"])):
        assert merged["features"][j]["counts"] == list(np.sum([p["features"][j]["counts"] for p in ps], axis=0))
    buckets: dict[str, int] = {}
    for p in ps:
        for k, v in p["latency_us"]["buckets"].items():
            buckets[k] = buckets.get(k, 0) + v
    assert merged["latency_us"]["buckets"] == buckets
    # merging aggregates of halves equals merging everything at once
    halves = aggregate.merge_all([aggregate.merge_all(ps[: n // 2]), aggregate.merge_all(ps[n // 2:])])
    assert halves["features"] == merged["features"] and halves["requests"] == merged["requests"]


def test_signed_envelope_roundtrip_uses_canonical_json() -> None:
    dev = SimDevice("c1")
    doc = sign_document({"a": 1}, dev.key)
    assert json.loads(dev.sign({"a": 1})) == doc


def test_fast_signature_path_cannot_be_tricked(fleet, baseline) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(9)
    dev = SimDevice("fast")
    _enrol(fleet, dev)
    proc = Processor(fleet.settings, fleet.ctx.engine)
    good = dev.telemetry(rng, baseline)
    raw = dev.sign(good)
    evil = dict(good, requests=10**9)
    # a second "payload" key after the signature: JSON parsers keep the last one
    smuggled = raw[:-1] + b',"payload":' + canonical_json(evil) + b"}"
    pretty = json.dumps(json.loads(dev.sign(dev.telemetry(rng, baseline))), indent=2).encode()  # not canonical
    proc.process([(dev.topic("telemetry"), smuggled), (dev.topic("telemetry"), pretty)])
    snap = proc.stats.snapshot()
    assert snap["dropped"] == {"bad-signature": 1} and snap["stored"]["telemetry"] == 1
    proc.process([(dev.topic("telemetry"), raw)])
    with Session(fleet.ctx.engine) as db:
        rows = db.exec(select(TelemetryWindow).order_by(TelemetryWindow.seq)).all()
        assert [r.requests for r in rows] == [good["requests"], 200]
        assert rows[0].payload == good


def test_retention_prunes_windows_but_keeps_aggregates(fleet, baseline) -> None:  # type: ignore[no-untyped-def]
    from fleet.models import now

    dev = SimDevice("old")
    _enrol(fleet, dev)
    proc = Processor(fleet.settings, fleet.ctx.engine)
    rng = np.random.default_rng(2)
    proc.process([(dev.topic("telemetry"), dev.sign(dev.telemetry(rng, baseline))) for _ in range(3)])
    with Session(fleet.ctx.engine) as db:
        rows = db.exec(select(TelemetryWindow).order_by(TelemetryWindow.seq)).all()
        for r in rows[:2]:
            r.received_at = now() - (fleet.settings.ingest.retention_days + 1) * 86400
            db.add(r)
        db.commit()
    assert proc.prune() == 2
    with Session(fleet.ctx.engine) as db:
        assert [r.seq for r in db.exec(select(TelemetryWindow))] == [3]
        assert sum(a.n_windows for a in db.exec(select(Aggregate))) == 3


def test_store_retries_when_the_database_is_briefly_unavailable(fleet, baseline, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy.exc import OperationalError

    dev = SimDevice("flaky")
    _enrol(fleet, dev)
    proc = Processor(fleet.settings, fleet.ctx.engine)
    real = proc._store
    failures = {"left": 2}

    def flaky(parsed):  # type: ignore[no-untyped-def]
        if failures["left"]:
            failures["left"] -= 1
            raise OperationalError("INSERT", {}, Exception("server closed the connection"))
        return real(parsed)

    monkeypatch.setattr(proc, "_store", flaky)
    monkeypatch.setattr("fleet.ingest.store.time.sleep", lambda s: None)
    proc.process([(dev.topic("telemetry"), dev.sign(dev.telemetry(np.random.default_rng(0), baseline)))])
    snap = proc.stats.snapshot()
    assert failures["left"] == 0 and snap["stored"]["telemetry"] == 1 and not snap["dropped"]


def test_vectorised_merge_equals_plain_merge(baseline) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(11)
    ps = [SimDevice(f"v{i}").telemetry(rng, baseline, errors=i) for i in range(9)]
    for i, p in enumerate(ps):
        p["features"][i % 3]["nan"] = i
        p["prediction"]["nan"] = 1
    fast, plain = aggregate.merge_many(ps), aggregate.merge_all(ps)
    assert fast["features"] == plain["features"] and fast["prediction"] == plain["prediction"]
    assert fast["errors"] == plain["errors"] and fast["latency_us"] == plain["latency_us"]
    assert sum(f["nan"] for f in fast["features"]) == sum(range(9)) and fast["prediction"]["nan"] == 9


def test_device_cache_reads_keys_labels_and_status_alike_on_both_databases(fleet) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL reads the rows with one array parameter and the attributes through fastjson;
    the result is what SQLAlchemy's rows give on SQLite: keys, class, cohort (an integer of 20
    digits kept exact), decommissioned and quarantined devices."""
    from agent.keys import key_id
    from fleet.ingest.device_cache import DeviceCache

    devs = [SimDevice(f"k{i}") for i in range(4)]
    _enrol(fleet, devs[0], {"region": "eu"})
    _enrol(fleet, devs[1], {"cohort": "beta", "region": "us"})
    _enrol(fleet, devs[2], {"region": 12345678901234567890123})
    _enrol(fleet, devs[3], {"region": "ap"})
    with fleet.ctx.session() as db:
        decommission(db, devs[3].device_id, "test")
        d = db.get(Device, devs[2].device_id)
        d.quarantined_at = 5.0
        db.add(d)
        db.commit()
    cache = DeviceCache(fleet.settings, fleet.ctx.engine)
    infos = cache.lookup([d.device_id for d in devs] + ["nobody"])
    assert [infos[d.device_id].cohort for d in devs[:3]] == ["region=eu", "beta", "region=12345678901234567890123"]
    assert all(key_id(devs[i].key) in infos[devs[i].device_id].keyring.keys for i in range(3))
    assert [infos[d.device_id].quarantined for d in devs[:3]] == [False, False, True]
    assert infos[devs[3].device_id].keyring is None and infos["nobody"].keyring is None
    assert infos[devs[0].device_id].device_class == devs[0].device_class
