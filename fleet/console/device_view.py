"""What the device page adds to the device's identity and state: its installs and rollbacks,
each labelled with the rollout that sent it, and the alerts that concern it (drift alerts for
the versions and cohort it ran, and alerts of the rollouts it took part in)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, or_, select

from fleet.ingest.aggregate import cohort_of
from fleet.models import Device, DeviceEvent, DriftAlert
from fleet.rollouts.models import Rollout, RolloutCommand, RolloutTarget, TargetStatusChange

KIND_LABELS = {"install": "install", "rollback": "rollback", "stop-candidate": "stop candidate",
               "promote": "promote"}


@dataclass
class Change:
    """One install or rollback of this device, from the rollout's own records."""

    at: float
    kind: str            # install | rollback | ...
    rollout_id: int | None
    model: str
    version: int | None
    status: str          # the target's status after this change
    reason: str


def changes(db: Session, device_id: str, limit: int = 50) -> list[Change]:
    rollouts = {}
    out: list[Change] = []
    for t in db.exec(select(RolloutTarget).where(RolloutTarget.device_id == device_id)
                     .order_by(RolloutTarget.id.desc()).limit(limit)).all():
        r = rollouts.setdefault(t.rollout_id, db.get(Rollout, t.rollout_id))
        for h in db.exec(select(TargetStatusChange).where(TargetStatusChange.rollout_id == t.rollout_id,
                                                          TargetStatusChange.device_id == device_id)
                         .order_by(TargetStatusChange.id)).all():
            if h.to_status in ("commanded", "installed", "healthy", "rolling-back", "rolled-back", "failed"):
                kind = "rollback" if h.to_status.startswith("roll") else "install"
                version = t.from_version if kind == "rollback" else (r.version if r else None)
                out.append(Change(h.at, kind, t.rollout_id, r.model_name if r else "", version, h.to_status,
                                  h.reason or ""))
    order = {id(c): i for i, c in enumerate(out)}
    return sorted(out, key=lambda c: (c.at, order[id(c)]), reverse=True)[:limit]


def event_labels(db: Session, events: list[DeviceEvent]) -> dict[str, tuple[str, int | None]]:
    """command id -> (command kind, rollout id) for the events that answer a rollout command."""
    ids = [e.command_id for e in events if e.command_id]
    if not ids:
        return {}
    rows = db.exec(select(RolloutCommand.command_id, RolloutCommand.kind, RolloutCommand.rollout_id)
                   .where(RolloutCommand.command_id.in_(ids))).all()
    return {cid: (KIND_LABELS.get(kind, kind), rid) for cid, kind, rid in rows}


def device_alerts(db: Session, d: Device, cohort_keys: Any = ("region",), limit: int = 20) -> list[DriftAlert]:
    versions = {v for v in (d.installed_version, d.previous_version) if v is not None}
    rollout_ids = [rid for rid in db.exec(select(RolloutTarget.rollout_id)
                                          .where(RolloutTarget.device_id == d.id)).all()]
    conds = [DriftAlert.reference.in_([f"rollout:{i}" for i in rollout_ids])] if rollout_ids else []
    if d.installed_name and versions:
        cohort = cohort_of(d.attributes, cohort_keys)
        conds.append((DriftAlert.model_name == d.installed_name) & DriftAlert.model_version.in_(versions)
                     & DriftAlert.cohort.in_([cohort, "all"]) & ~DriftAlert.reference.like("rollout:%"))
    if not conds:
        return []
    return list(db.exec(select(DriftAlert).where(or_(*conds)).order_by(DriftAlert.id.desc()).limit(limit)))
