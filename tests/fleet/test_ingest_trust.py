"""Ingest trust mode (issue 19): `[ingest] verify = "sample"` checks a random share of telemetry
windows and every state/event; a forged window that is sampled quarantines its device, whose
later windows are refused until an operator releases it. Telemetry comes from fleet.devsim
(agent.sketches + agent.keys, the agent's own code)."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, select

from agent.canonical import canonical_json
from agent.keys import sign_document
from fleet.devsim import SimDevice
from fleet.ingest.store import Processor
from fleet.ingest.trust import TrustPolicy
from fleet.models import AuditEntry, Device, TelemetryWindow
from fleet.registry.enrolment import create_enrolment_token, enrol
from fleet.settings import SettingsError, load_settings


def _enrol(fleet, dev: SimDevice) -> None:  # type: ignore[no-untyped-def]
    dev.fleet = fleet.settings.fleet_id
    with fleet.ctx.session() as db:
        tok, _ = create_enrolment_token(db, "test")
    with fleet.ctx.session() as db:
        enrol(db, fleet.settings, tok, dev.public_key_b64, device_id=dev.device_id, device_class=dev.device_class)


def _forge(dev: SimDevice, payload: dict) -> bytes:  # type: ignore[type-arg]
    """What a holder of the device's broker password (not its signing key) can publish: the
    device's key id over a signature from some other key."""
    doc = sign_document(payload, Ed25519PrivateKey.generate())
    doc["signature"]["key_id"] = sign_document(payload, dev.key)["signature"]["key_id"]
    return canonical_json(doc)


def _processor(fleet, rate: float, seed: int = 0) -> Processor:  # type: ignore[no-untyped-def]
    s = replace(fleet.settings, ingest=replace(fleet.settings.ingest, verify="sample", sample_rate=rate))
    proc = Processor(s, fleet.ctx.engine)
    proc.trust = TrustPolicy("sample", rate, random.Random(seed))
    return proc


def _windows(fleet, device_id: str) -> int:  # type: ignore[no-untyped-def]
    with Session(fleet.ctx.engine) as db:
        return len(db.exec(select(TelemetryWindow).where(TelemetryWindow.device_id == device_id)).all())


def test_settings_schema() -> None:
    assert load_settings(env={}, ingest={"verify": "sample", "sample_rate": 0.02}).ingest.sample_rate == 0.02
    with pytest.raises(SettingsError, match="ingest.verify"):
        load_settings(env={}, ingest={"verify": "some"})
    with pytest.raises(SettingsError, match="sample_rate"):
        load_settings(env={}, ingest={"verify": "sample", "sample_rate": 1.5})


def test_forged_window_is_caught_when_sampled_and_quarantines(fleet, baseline) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(7)
    dev, other = SimDevice("victim"), SimDevice("bystander")
    _enrol(fleet, dev)
    _enrol(fleet, other)
    proc = _processor(fleet, 0.2, seed=11)
    genuine = [(other.topic("telemetry"), other.sign(other.telemetry(rng, baseline))) for _ in range(30)]
    forged = [(dev.topic("telemetry"), _forge(dev, dev.telemetry(rng, baseline))) for _ in range(30)]
    for g, f in zip(genuine, forged, strict=True):  # one message per batch: arrival order is kept
        proc.process([g])
        proc.process([f])
    snap = proc.stats.snapshot()
    # the first sampled forgery was caught; the ones before it got through (what sampling gives up)
    caught = snap["dropped"]["bad-signature"]
    assert caught == 1
    slipped = _windows(fleet, "victim")
    assert 0 <= slipped < 30 and snap["dropped"]["quarantined"] == 30 - slipped - 1
    assert _windows(fleet, "bystander") == 30  # an honest device is never quarantined by sampling
    r = fleet.client.get("/api/devices/victim", headers=fleet.h("viewer")).json
    assert r["quarantine"]["reason"].startswith("telemetry: bad-signature")
    assert fleet.client.get("/api/devices/bystander", headers=fleet.h("viewer")).json["quarantine"] is None
    with Session(fleet.ctx.engine) as db:
        assert db.exec(select(AuditEntry).where(AuditEntry.action == "device.quarantine")).one().target == \
            "device:victim"


def test_quarantine_refuses_windows_until_an_operator_releases(fleet, baseline) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(8)
    dev = SimDevice("dev-q")
    _enrol(fleet, dev)
    trusting, checking = _processor(fleet, 0.0), _processor(fleet, 1.0)
    # never sampled: a forged window is stored (docs/security.md: what sampling gives up) ...
    trusting.process([(dev.topic("telemetry"), _forge(dev, dev.telemetry(rng, baseline)))])
    assert _windows(fleet, "dev-q") == 1
    # ... but a forged state is always checked, even at sample_rate 0 (and quarantines too)
    dev_s = SimDevice("dev-s")
    _enrol(fleet, dev_s)
    trusting.process([(dev_s.topic("state"), _forge(dev_s, dev_s.state(installed=None)))])
    assert trusting.stats.snapshot()["dropped"] == {"bad-signature": 1}
    assert fleet.client.get("/api/devices/dev-s", headers=fleet.h("viewer")).json["quarantine"] is not None
    assert fleet.client.get("/api/devices/dev-q", headers=fleet.h("viewer")).json["quarantine"] is None
    # sampled forged window: quarantined; later genuine windows refused, signed state still read
    checking.forget_device("dev-q")
    checking.process([(dev.topic("telemetry"), _forge(dev, dev.telemetry(rng, baseline)))])
    checking.process([(dev.topic("telemetry"), dev.sign(dev.telemetry(rng, baseline)))])
    state = dev.state(installed={"name": "digits", "version": 3, "manifest_sha256": "a" * 64})
    checking.process([(dev.topic("state"), dev.sign(state))])
    assert checking.stats.snapshot()["dropped"] == {"bad-signature": 1, "quarantined": 1}
    assert _windows(fleet, "dev-q") == 1
    with Session(fleet.ctx.engine) as db:
        d = db.get(Device, "dev-q")
        assert d is not None and d.quarantined_at is not None and d.installed_version == 3
    assert fleet.client.post("/api/devices/dev-q/release", headers=fleet.h("viewer")).status_code == 403
    r = fleet.client.post("/api/devices/dev-q/release", headers=fleet.h("operator"))
    assert r.status_code == 200 and r.json["quarantine"] is None
    assert fleet.client.post("/api/devices/dev-q/release", headers=fleet.h("operator")).status_code == 409
    checking.forget_device("dev-q")  # other ingest processes see the release within ingest.device_cache_s
    checking.process([(dev.topic("telemetry"), dev.sign(dev.telemetry(rng, baseline)))])
    assert _windows(fleet, "dev-q") == 2


def test_verify_all_never_quarantines(fleet, baseline) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(9)
    dev = SimDevice("dev-a")
    _enrol(fleet, dev)
    proc = Processor(fleet.settings, fleet.ctx.engine)
    assert fleet.settings.ingest.verify == "all"
    proc.process([(dev.topic("telemetry"), _forge(dev, dev.telemetry(rng, baseline))),
                  (dev.topic("telemetry"), dev.sign(dev.telemetry(rng, baseline)))])
    assert proc.stats.snapshot()["dropped"] == {"bad-signature": 1}
    assert _windows(fleet, "dev-a") == 1
