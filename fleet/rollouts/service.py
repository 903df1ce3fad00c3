"""Operator operations on rollouts: create, approve, pause, resume, abort, roll back (a rollout,
or a version fleet-wide / per cohort with one call), plus read models for the API and console.

Every change is written to the audit log in the same transaction. Commands are only queued
here (outbox); the evaluator, or `publish_now`, sends them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from sqlmodel import Session, func, select

from fleet import audit
from fleet.drift import alerts
from fleet.models import Device, ModelVersion
from fleet.rollouts import commands, machine
from fleet.rollouts.assignment import assign_waves
from fleet.rollouts.config import ACTOR, EvaluatorConfig
from fleet.rollouts.machine import can, transition
from fleet.rollouts.models import (
    GateEvaluation,
    Rollout,
    RolloutCommand,
    RolloutTarget,
    RolloutWave,
    TargetStatusChange,
)
from fleet.rollouts.rollback import find_build, rollback_target
from fleet.rollouts.spec import RolloutSpec, TargetFilter
from fleet.rollouts.states import (
    LIVE_ROLLOUTS,
    OPEN_ROLLOUTS,
    ROLLBACK_TARGETS,
    RolloutEvent,
    RolloutState,
    TargetEvent,
    TargetState,
    WaveEvent,
    WaveState,
)

log = logging.getLogger(__name__)


class RolloutError(Exception):
    """An operation is not possible now; `status` is the HTTP status the API answers with."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def matching_devices(s: Session, target: TargetFilter) -> list[Device]:
    q = select(Device).where(Device.fleet == target.fleet, Device.status == "active")
    if target.device_classes:
        q = q.where(Device.device_class.in_(target.device_classes))
    if target.device_ids:
        q = q.where(Device.id.in_(target.device_ids))
    return [d for d in s.exec(q).all()
            if target.matches(d.fleet, d.id, d.device_class, d.tags, d.attributes)]


def create_rollout(s: Session, spec: RolloutSpec | Mapping[str, Any], actor: str,
                   at: float | None = None) -> Rollout:
    """Validate, pick the devices, assign waves (stable hash) and store everything. The
    evaluator starts the first wave on its next tick."""
    at = time.time() if at is None else at
    spec = spec if isinstance(spec, RolloutSpec) else RolloutSpec.from_dict(spec)
    spec.validate()
    builds = {mv.device_class: mv for mv in s.exec(select(ModelVersion).where(
        ModelVersion.name == spec.model_name, ModelVersion.version == spec.version)).all()}
    if not builds:
        raise RolloutError(404, "unknown-model", f"no build of {spec.model_name} v{spec.version} is uploaded")
    live = s.exec(select(Rollout).where(Rollout.model_name == spec.model_name,
                                        Rollout.fleet == spec.target.fleet,
                                        Rollout.status.in_(OPEN_ROLLOUTS))).all()
    if live:
        raise RolloutError(409, "rollout-in-progress",
                           f"rollout {live[0].id} of {spec.model_name} v{live[0].version} is still {live[0].status}")
    devices = [d for d in matching_devices(s, spec.target) if d.device_class in builds]
    if not devices:
        raise RolloutError(422, "no-devices", "no active device matches the target filter and has a build")
    by_id = {d.id: d for d in devices}
    r = Rollout(name=spec.name or f"{spec.model_name}-v{spec.version}", fleet=spec.target.fleet,
                model_name=spec.model_name, version=spec.version, spec=spec.to_dict(), created_by=actor,
                created_at=at, updated_at=at)
    s.add(r)
    s.flush()
    groups = assign_waves(spec.assignment_seed, by_id, spec.waves)
    for i, (w, ids) in enumerate(zip(spec.waves, groups, strict=True)):
        s.add(RolloutWave(rollout_id=r.id, index=i, name=w.name, mode=w.mode, phase=w.mode, planned=len(ids)))
        for dev_id in ids:
            d = by_id[dev_id]
            prev = d.installed_version if d.installed_name == spec.model_name else None
            s.add(RolloutTarget(rollout_id=r.id, wave_index=i, device_id=dev_id, device_class=d.device_class,
                                model_version_id=builds[d.device_class].id, from_version=prev,
                                from_manifest_sha256=d.installed_manifest_sha256 if prev is not None else None,
                                updated_at=at))
    audit.record(s, actor, "rollout.create", f"rollout:{r.id}", None,
                 {"spec": spec.to_dict(), "waves": [len(g) for g in groups], "devices": len(devices)})
    log.info("rollout created", extra={"rollout": r.id, "devices": len(devices)})
    return r


def get_rollout(s: Session, rollout_id: int) -> Rollout:
    r = s.get(Rollout, rollout_id)
    if r is None:
        raise RolloutError(404, "not-found", f"no rollout {rollout_id}")
    return r


def _wave(s: Session, r: Rollout, index: int | None = None) -> RolloutWave:
    i = r.current_wave if index is None else index
    w = s.exec(select(RolloutWave).where(RolloutWave.rollout_id == r.id, RolloutWave.index == i)).first()
    if w is None:
        raise RolloutError(404, "not-found", f"rollout {r.id} has no wave {i}")
    return w


def approve(s: Session, rollout_id: int, actor: str, at: float | None = None) -> Rollout:
    """Human approval for the current wave; the next tick starts the next wave."""
    at = time.time() if at is None else at
    r = get_rollout(s, rollout_id)
    w = _wave(s, r)
    early = w.status in (WaveState.ACTIVE, WaveState.SOAKING) and RolloutSpec.from_stored(r.spec).waves[
        w.index].gates.require_approval   # approved before its gates passed: it goes on when they do
    if w.status != WaveState.AWAITING_APPROVAL and not early:
        raise RolloutError(409, "not-awaiting-approval", f"wave {w.index} is {w.status}")
    w.approved_by, w.approved_at = actor, at
    s.add(w)
    audit.record(s, actor, "rollout.approve", f"rollout:{r.id}", {"wave": w.index, "status": w.status},
                 {"approved_by": actor})
    return r


def pause(s: Session, rollout_id: int, actor: str, why: str = "operator pause") -> Rollout:
    r = get_rollout(s, rollout_id)
    if not can(r, RolloutEvent.PAUSE):
        raise RolloutError(409, "not-running", f"rollout is {r.status}")
    before = r.status
    at = time.time()
    transition(s, r, RolloutEvent.PAUSE, at=at, reason=f"{why} (by {actor})",
               why={"kind": "operator-pause", "by": actor, "why": why, "at": at})
    audit.record(s, actor, "rollout.pause", f"rollout:{r.id}", {"status": before}, r.reason)
    alerts.raise_rollout_alert(s, r, alerts.pause_reason(r), actor)  # every pause is an open alert (issue 18)
    return r


def resume(s: Session, rollout_id: int, actor: str, at: float | None = None) -> Rollout:
    """Continue a paused rollout. A wave that breached is retried from the start: its devices
    that were rolled back are commanded again on the next tick (a deliberate operator choice)."""
    at = time.time() if at is None else at
    r = get_rollout(s, rollout_id)
    if not can(r, RolloutEvent.RESUME):
        raise RolloutError(409, "not-paused", f"rollout is {r.status}")
    w = _wave(s, r)
    if can(w, WaveEvent.RETRY):
        transition(s, w, WaveEvent.RETRY, at=at, reason=f"resumed by {actor}")
        for t in s.exec(select(RolloutTarget).where(RolloutTarget.rollout_id == r.id,
                                                    RolloutTarget.wave_index == w.index)).all():
            if t.status != TargetState.SKIPPED:
                transition(s, t, TargetEvent.RESET, at=at, reason="resumed by operator")
    before = r.reason
    transition(s, r, RolloutEvent.RESUME, at=at, reason=f"resumed by {actor}")
    audit.record(s, actor, "rollout.resume", f"rollout:{r.id}", {"status": RolloutState.PAUSED, "reason": before},
                 {"status": r.status, "wave": w.index})
    alerts.close_rollout_alerts(s, r.id, actor, "resumed")
    return r


def abort(s: Session, rollout_id: int, actor: str) -> Rollout:
    """Stop the rollout: no further commands, queued unsent commands are cancelled. Devices keep
    what they run; use rollback to send them back."""
    r = get_rollout(s, rollout_id)
    if not can(r, RolloutEvent.ABORT):
        raise RolloutError(409, "finished", f"rollout is {r.status}")
    before = r.status
    cancelled = 0
    for c in s.exec(select(RolloutCommand).where(RolloutCommand.rollout_id == r.id,
                                                 RolloutCommand.sent_at.is_(None))).all():
        c.expires_at = 0.0   # the outbox skips expired rows
        s.add(c)
        cancelled += 1
    transition(s, r, RolloutEvent.ABORT, at=time.time(), reason=f"aborted by {actor}")
    audit.record(s, actor, "rollout.abort", f"rollout:{r.id}", {"status": before},
                 {"status": r.status, "cancelled_commands": cancelled})
    alerts.close_rollout_alerts(s, r.id, actor, "aborted")
    return r


def rollback_rollout(s: Session, rollout_id: int, actor: str, signer: commands.FleetSigner,
                     cfg: EvaluatorConfig | None = None, at: float | None = None) -> dict[str, Any]:
    """Send every device this rollout touched back to the version it ran before."""
    at = time.time() if at is None else at
    cfg = cfg or EvaluatorConfig()
    r = get_rollout(s, rollout_id)
    waves = {w.index: w for w in s.exec(select(RolloutWave).where(RolloutWave.rollout_id == r.id)).all()}
    targets = s.exec(select(RolloutTarget).where(RolloutTarget.rollout_id == r.id)).all()
    for c in s.exec(select(RolloutCommand).where(RolloutCommand.rollout_id == r.id,
                                                 RolloutCommand.sent_at.is_(None))).all():
        c.expires_at = 0.0
        s.add(c)
    queued = 0
    for t in targets:
        if t.status in ROLLBACK_TARGETS:
            d = s.get(Device, t.device_id)
            phase = waves[t.wave_index].phase if t.wave_index in waves else "install"   # a wave's phase
            if rollback_target(s, r, t, d, phase, signer, cfg, f"operator rollback by {actor}", at):
                queued += 1
    before = r.status
    transition(s, r, RolloutEvent.ROLL_BACK, at=at, reason=f"rolled back by {actor}",
               why={"kind": "operator-rollback", "by": actor, "at": at, "devices": queued})
    audit.record(s, actor, "rollout.rollback", f"rollout:{r.id}", {"status": before}, r.reason)
    alerts.close_rollout_alerts(s, r.id, actor, "rolled back")
    return {"rollout": r.id, "commands": queued}


def rollback_version(s: Session, model_name: str, version: int, actor: str, signer: commands.FleetSigner,
                     target: TargetFilter | None = None, cfg: EvaluatorConfig | None = None) -> dict[str, Any]:
    """One call: every matching device running `model_name` v`version` goes back to the version
    it ran before (Device.previous_version, from its signed state). Live rollouts of that version
    are paused first so they do not push it again."""
    from fleet.catalogue.lifecycle import (  # issue 16: never back onto a retired version
        LifecycleError,
        status_name,
    )

    cfg = cfg or EvaluatorConfig()
    at = time.time()
    flt = target or TargetFilter()
    devices = [d for d in matching_devices(s, flt)
               if d.installed_name == model_name and d.installed_version == version]
    retired = sorted({d.previous_version for d in devices if d.previous_version is not None
                      and status_name(s, model_name, d.previous_version) == "retired"})
    if retired:
        raise LifecycleError(409, "version-retired", f"{model_name} v{', v'.join(map(str, retired))} is retired: devices"
                             f" cannot be sent back to it; move them to an active version (POST .../move-off)")
    for r in s.exec(select(Rollout).where(Rollout.model_name == model_name, Rollout.version == version,
                                          Rollout.status.in_(LIVE_ROLLOUTS))).all():
        transition(s, r, RolloutEvent.PAUSE, at=at, reason=f"{model_name} v{version} rolled back by {actor}",
                   why={"kind": "version-rollback", "by": actor, "at": at,
                        "why": f"{model_name} v{version} rolled back"})
        alerts.raise_rollout_alert(s, r, alerts.pause_reason(r), actor)
    queued, skipped = [], []
    for d in devices:
        prev = d.previous_version
        mv = find_build(s, model_name, prev, d.device_class) if prev is not None else None
        if mv is None:
            skipped.append({"device": d.id, "reason": "no previous version build"})
            continue
        commands.queue_command(s, d, "rollback", commands.rollback_body(
            mv, signer, cfg.public_url, (d.state or {}).get("trusted_fleet_keys")), signer,
            ttl_s=cfg.command_ttl_s, at=at)
        queued.append(d.id)
    result = {"model": model_name, "version": version, "filter": _filter_dict(flt), "commands": len(queued),
              "devices": queued[:500], "skipped": skipped[:100]}
    audit.record(s, actor, "rollout.rollback-version", f"model:{model_name}:v{version}", None, result)
    return result


def _filter_dict(f: TargetFilter) -> dict[str, Any]:
    return {"fleet": f.fleet, "device_classes": list(f.device_classes), "tags": list(f.tags),
            "attributes": dict(f.attributes), "device_ids": list(f.device_ids)}


# ------------------------------------------------------------------------------------------
# read models


def rollout_summary(s: Session, r: Rollout) -> dict[str, Any]:
    counts = dict(s.exec(select(RolloutTarget.status, func.count()).where(RolloutTarget.rollout_id == r.id)
                         .group_by(RolloutTarget.status)).all())
    return {"id": r.id, "name": r.name, "fleet": r.fleet, "model_name": r.model_name, "version": r.version,
            "status": r.status, "current_wave": r.current_wave, "created_at": r.created_at,
            "created_by": r.created_by, "updated_at": r.updated_at, "completed_at": r.completed_at,
            "reason": r.reason, "targets": counts, "waiting": _waiting(s, r)}


def _waiting(s: Session, r: Rollout) -> dict[str, Any] | None:
    """Why the current wave waits instead of being judged ("waiting: ingest disconnected")."""
    if r.status not in LIVE_ROLLOUTS:
        return None
    w = s.exec(select(RolloutWave).where(RolloutWave.rollout_id == r.id,
                                         RolloutWave.index == r.current_wave)).first()
    return (w.last_verdict or {}).get("waiting") if w is not None else None


def rollout_detail(s: Session, r: Rollout, *, history: int = 200) -> dict[str, Any]:
    waves = s.exec(select(RolloutWave).where(RolloutWave.rollout_id == r.id).order_by(RolloutWave.index)).all()
    targets = s.exec(select(RolloutTarget).where(RolloutTarget.rollout_id == r.id)).all()
    per_wave: dict[int, dict[str, int]] = {}
    for t in targets:
        per_wave.setdefault(t.wave_index, {})
        per_wave[t.wave_index][t.status] = per_wave[t.wave_index].get(t.status, 0) + 1
    evals = s.exec(select(GateEvaluation).where(GateEvaluation.rollout_id == r.id)
                   .order_by(GateEvaluation.at.desc()).limit(history)).all()
    return {**rollout_summary(s, r), "spec": r.spec,
            "waves": [{"index": w.index, "name": w.name, "mode": w.mode, "phase": w.phase, "status": w.status,
                       "planned": w.planned, "started_at": w.started_at, "gates_passed_at": w.gates_passed_at,
                       "completed_at": w.completed_at, "approved_by": w.approved_by,
                       "targets": per_wave.get(w.index, {}),
                       "gates": (w.last_verdict or {}).get("results")} for w in waves],
            "gate_history": [{"at": e.at, "wave": e.wave_index, "status": e.status, "devices": e.devices,
                              "values": {x["gate"]: x["value"] for x in e.results},
                              "statuses": {x["gate"]: x["status"] for x in e.results}} for e in reversed(evals)],
            "status_history": [{"at": m.at, "wave": m.wave_index, "event": m.event, "from": m.from_status,
                                "to": m.to_status, "reason": m.reason} for m in machine.history(s, r.id)[-history:]]}


def rollout_targets(s: Session, r: Rollout, wave: int | None = None) -> list[dict[str, Any]]:
    q = select(RolloutTarget).where(RolloutTarget.rollout_id == r.id)
    if wave is not None:
        q = q.where(RolloutTarget.wave_index == wave)
    return [{"device_id": t.device_id, "wave": t.wave_index, "device_class": t.device_class, "status": t.status,
             "reason": t.reason, "from_version": t.from_version, "command_id": t.command_id,
             "commanded_at": t.commanded_at, "installed_at": t.installed_at, "updated_at": t.updated_at}
            for t in s.exec(q.order_by(RolloutTarget.wave_index, RolloutTarget.device_id)).all()]


def target_history(s: Session, r: Rollout, device_id: str) -> list[dict[str, Any]]:
    rows = s.exec(select(TargetStatusChange).where(TargetStatusChange.rollout_id == r.id,
                                                   TargetStatusChange.device_id == device_id)
                  .order_by(TargetStatusChange.id)).all()
    return [{"at": h.at, "from": h.from_status, "to": h.to_status, "reason": h.reason} for h in rows]


__all__ = ["ACTOR", "RolloutError", "abort", "approve", "create_rollout", "pause", "resume", "rollback_rollout",
           "rollback_version", "rollout_detail", "rollout_summary", "rollout_targets", "target_history"]
