"""The overview's answer to "is anything wrong?": live and paused rollouts (with why), open
alerts, and devices that stopped reporting. Bounded queries only, so the page stays fast at
10,000 devices and 1,000 rollouts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session, func, select

from fleet.catalogue import reviews
from fleet.console import rollout_view
from fleet.models import Device, DriftAlert, ModelOwner, now
from fleet.rollouts.models import Rollout, RolloutTarget, RolloutWave

SILENT_AFTER_S = 15 * 60   # an active device unheard of for this long is "not reporting"
LIST_MAX = 10


@dataclass
class Wrong:
    paused: list[dict[str, Any]] = field(default_factory=list)
    in_progress: list[dict[str, Any]] = field(default_factory=list)
    open_alerts: list[DriftAlert] = field(default_factory=list)
    open_alert_count: int = 0
    silent: list[Device] = field(default_factory=list)
    silent_count: int = 0
    silent_after_s: int = SILENT_AFTER_S
    review_overdue: list[dict[str, Any]] = field(default_factory=list)

    @property
    def anything(self) -> bool:
        return bool(self.paused or self.open_alert_count or self.silent_count or self.review_overdue)


def _rollouts(db: Session, statuses: tuple[str, ...]) -> list[dict[str, Any]]:
    """The same dicts as service.rollout_summary, with the target counts and waiting waves of
    all listed rollouts read in two queries instead of two per rollout."""
    rows = db.exec(select(Rollout).where(Rollout.status.in_(statuses)).order_by(Rollout.updated_at.desc())
                   .limit(LIST_MAX)).all()
    ids = [r.id for r in rows]
    counts: dict[int, dict[str, int]] = {i: {} for i in ids if i is not None}
    if counts:
        for rid, st, n in db.exec(select(RolloutTarget.rollout_id, RolloutTarget.status, func.count())
                                  .where(RolloutTarget.rollout_id.in_(counts))
                                  .group_by(RolloutTarget.rollout_id, RolloutTarget.status)):
            counts[rid][st] = int(n)
    live = {r.id: r.current_wave for r in rows if r.status in ("running", "awaiting-approval")}
    waves = {w.rollout_id: w for w in db.exec(select(RolloutWave).where(RolloutWave.rollout_id.in_(live)))
             if live.get(w.rollout_id) == w.index} if live else {}
    out = []
    for r in rows:
        w = waves.get(r.id)
        s = {"id": r.id, "name": r.name, "fleet": r.fleet, "model_name": r.model_name, "version": r.version,
             "status": r.status, "current_wave": r.current_wave, "created_at": r.created_at,
             "created_by": r.created_by, "updated_at": r.updated_at, "completed_at": r.completed_at,
             "reason": r.reason, "targets": counts.get(r.id, {}),
             "waiting": (w.last_verdict or {}).get("waiting") if w is not None else None}
        s["why"] = rollout_view.why(r.reason) if r.status == "paused" else ""
        s["waiting_message"] = (s.get("waiting") or {}).get("message", "")
        out.append(s)
    return out


def review_overdue(db: Session, at: float, default_days: int) -> list[dict[str, Any]]:
    """Models whose scheduled review date has passed (fleet.catalogue.reviews, the same rule as the
    edgefleet_model_reviews_overdue gauge and /console/lifecycle)."""
    out = []
    for st in reviews.states(db, at, default_days):
        if st.overdue:
            o = db.get(ModelOwner, st.name)
            out.append({"name": st.name, "team": o.team if o is not None else "", "due": st.due_at,
                        "days": int((at - st.due_at) // 86400)})
    return sorted(out, key=lambda x: x["due"])[:LIST_MAX]


def whats_wrong(db: Session, at: float | None = None, review_days: int = reviews.DEFAULT_INTERVAL_DAYS) -> Wrong:
    at = now() if at is None else at
    cutoff = at - SILENT_AFTER_S
    silent_q = select(Device).where(Device.status == "active").where(
        (Device.last_seen.is_(None)) | (Device.last_seen < cutoff))
    count_q = select(func.count()).select_from(Device).where(Device.status == "active").where(
        (Device.last_seen.is_(None)) | (Device.last_seen < cutoff))
    return Wrong(
        paused=_rollouts(db, ("paused",)),
        in_progress=_rollouts(db, ("running", "awaiting-approval")),
        open_alerts=list(db.exec(select(DriftAlert).where(DriftAlert.status == "open")
                                 .order_by(DriftAlert.id.desc()).limit(LIST_MAX))),
        open_alert_count=int(db.exec(select(func.count()).select_from(DriftAlert)
                                     .where(DriftAlert.status == "open")).one()),
        silent=list(db.exec(silent_q.order_by(Device.last_seen).limit(LIST_MAX))),
        silent_count=int(db.exec(count_q).one()),
        review_overdue=review_overdue(db, at, review_days),
    )
