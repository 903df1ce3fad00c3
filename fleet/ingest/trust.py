"""Ingest trust mode (issue 19): with `[ingest] verify = "sample"` ingest checks the Ed25519
signature of a random `sample_rate` share of telemetry windows and of every state and event
message; the rest are trusted because the broker already authenticated the device (per-device
credentials with ACLs, fleet.registry.mqtt_access: a device can only publish on its own topics).

A failed check under sampling quarantines the device: unverified windows of a device that
forges are worthless, so its telemetry is refused (its state is still read, signed) until an
operator releases it (`POST /api/devices/<id>/release`). docs/security.md says what the
mode gives up.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from fleet import audit
from fleet.models import Device

log = logging.getLogger(__name__)
SAMPLED_KINDS = frozenset({"telemetry"})  # state and events are always verified


class TrustPolicy:
    """Which messages get their signature checked (one per message, thread-safe enough: the
    random module's generator is guarded by the GIL)."""

    def __init__(self, verify: str = "all", sample_rate: float = 1.0, rng: random.Random | None = None) -> None:
        self.sampling = verify == "sample"
        self.rate = sample_rate
        self._random = (rng or random.Random()).random

    def must_verify(self, kind: str) -> bool:
        return not self.sampling or kind not in SAMPLED_KINDS or self._random() < self.rate

    def expected_checks(self, routes: list[tuple[str, str] | None]) -> int:
        """About how many of these (kind, device) messages will have their signature checked."""
        if not self.sampling:
            return len(routes)
        sampled = sum(1 for r in routes if r is not None and r[0] in SAMPLED_KINDS)
        return len(routes) - sampled + int(sampled * self.rate)


def quarantine(engine: Engine, device_id: str, reason: str) -> bool:
    """Flag the device (once; the first reason stays); True when this call flagged it."""
    with Session(engine) as db:
        n = db.execute(update(Device).where(Device.id == device_id, Device.quarantined_at.is_(None))  # type: ignore[union-attr]
                       .values(quarantined_at=time.time(), quarantine_reason=reason)).rowcount
        if n:
            audit.record(db, "ingest", "device.quarantine", f"device:{device_id}", None, {"reason": reason})
        db.commit()
    if n:
        log.warning("device %s quarantined: %s", device_id, reason)
    return bool(n)


def release(db: Session, device_id: str, actor: str) -> Any:
    """An operator clears the quarantine (audited with the reason it had)."""
    from fleet.registry.enrolment import EnrolmentError

    d = db.get(Device, device_id)
    if d is None:
        raise EnrolmentError(404, "not-found", f"no device {device_id!r}")
    if d.quarantined_at is None:
        raise EnrolmentError(409, "not-quarantined", f"device {device_id!r} is not quarantined")
    before = {"at": d.quarantined_at, "reason": d.quarantine_reason}
    d.quarantined_at, d.quarantine_reason = None, None
    db.add(d)
    audit.record(db, actor, "device.release", f"device:{device_id}", before, None)
    return d
