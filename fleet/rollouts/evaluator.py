"""The rollout evaluator: one tick reads the evidence of every live rollout's current wave and
advances, waits, pauses or rolls back. All state is in the database, so a restarted process
resumes where the last one stopped.

Scale-out safety: a process acts on a rollout only while it holds that rollout's lease
(EvaluatorLease, taken by one conditional UPDATE) and, on PostgreSQL, while it holds the
rollout row with SELECT ... FOR UPDATE SKIP LOCKED for the whole deciding transaction. A
second process therefore skips a rollout another one is working on and, when it gets its turn,
sees the decisions already committed: nothing is commanded twice.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from fleet import audit
from fleet.drift import alerts
from fleet.ingest.health import blindness
from fleet.models import Device, ModelVersion
from fleet.rollouts import blind, commands
from fleet.rollouts.evidence import EvidenceQuery, collect, delivered_at, load_devices
from fleet.rollouts.gates import FAIL, PASS, Verdict, evaluate_wave
from fleet.rollouts.models import (
    ROLLBACK_UNCONFIRMED,
    EvaluatorLease,
    GateEvaluation,
    Rollout,
    RolloutCommand,
    RolloutTarget,
    RolloutWave,
    TargetStatusChange,
)
from fleet.rollouts.spec import RolloutSpec

log = logging.getLogger(__name__)
ACTOR = "rollout-evaluator"
OPERATOR_LEASE = "operator-commands"
LIVE_TARGET = ("commanded", "installed", "healthy", "failed")
DEVICE_REPORTED = ("install-failed", "install-refused", "install-rolled-back", "command-refused", "bundle-refused",
                   "local-rollback")


@dataclass
class EvaluatorConfig:
    public_url: str = "http://127.0.0.1:8080"
    holder: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{id(object())}")
    lease_ttl_s: float = 5.0          # renewed every tick; a crashed holder is replaced this soon
    record_every_s: float = 5.0       # store gate values at least this often (always on change)
    command_ttl_s: float = 3600.0


# ------------------------------------------------------------------------------------------
# leases


def acquire_lease(engine: Engine, name: str, holder: str, ttl_s: float, at: float | None = None) -> bool:
    """Take or renew the lease `name`; False when another holder has an unexpired one."""
    at = time.time() if at is None else at
    with Session(engine) as s:
        res = s.execute(update(EvaluatorLease)
                        .where(EvaluatorLease.name == name,
                               or_(EvaluatorLease.holder == holder, EvaluatorLease.expires_at < at))
                        .values(holder=holder, expires_at=at + ttl_s, acquired_at=at))
        if res.rowcount == 1:
            s.commit()
            return True
        s.rollback()
        if s.get(EvaluatorLease, name) is not None:
            return False
        s.add(EvaluatorLease(name=name, holder=holder, expires_at=at + ttl_s, acquired_at=at))
        try:
            s.commit()
        except IntegrityError:
            s.rollback()
            return False
        return True


def release_lease(engine: Engine, name: str, holder: str) -> None:
    with Session(engine) as s:
        s.execute(update(EvaluatorLease).where(EvaluatorLease.name == name, EvaluatorLease.holder == holder)
                  .values(expires_at=0.0))
        s.commit()


def holds_lease(s: Session, name: str, holder: str, at: float) -> bool:
    row = s.exec(select(EvaluatorLease).where(EvaluatorLease.name == name)).first()
    return bool(row and row.holder == holder and row.expires_at >= at)


# ------------------------------------------------------------------------------------------
# small helpers shared with service.py


def set_status(s: Session, t: RolloutTarget, status: str, reason: str | None, at: float) -> None:
    if t.status == status and (reason is None or t.reason == reason):
        return
    s.add(TargetStatusChange(rollout_id=t.rollout_id, target_id=t.id or 0, device_id=t.device_id, at=at,
                             from_status=t.status, to_status=status, reason=reason))
    t.status = status
    t.reason = reason
    t.updated_at = at
    s.add(t)


def find_build(s: Session, name: str, version: int, device_class: str) -> ModelVersion | None:
    return s.exec(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version,
                                             ModelVersion.device_class == device_class)).first()


def _trusted(d: Device) -> list[str] | None:
    return (d.state or {}).get("trusted_fleet_keys") if isinstance(d.state, dict) else None


def rollback_target(s: Session, r: Rollout, t: RolloutTarget, d: Device | None, phase: str,
                    signer: commands.FleetSigner, cfg: EvaluatorConfig, why: str, at: float) -> bool:
    """Send the device back to what it ran before this rollout; True when a command was queued."""
    if d is None:
        set_status(s, t, "failed", f"rollback-impossible:unknown-device ({why})", at)
        return False
    if phase != "install":
        cmd = commands.queue_command(s, d, "stop-candidate", {}, signer, rollout_id=r.id, ttl_s=cfg.command_ttl_s,
                                     at=at)
    else:
        if t.from_version is None:
            set_status(s, t, "failed", f"rollback-impossible:no-previous-version ({why})", at)
            return False
        if t.status == "failed" and t.reason in DEVICE_REPORTED and t.installed_at is None \
                and d.installed_name == r.model_name and d.installed_version == t.from_version:
            # the device itself signed that the install failed and it still runs the old version
            set_status(s, t, "rolled-back", f"never-left-previous ({why})", at)
            return False
        mv = find_build(s, r.model_name, t.from_version, t.device_class)
        if mv is None:
            set_status(s, t, "failed", f"rollback-impossible:no-build-of-v{t.from_version} ({why})", at)
            return False
        body = commands.rollback_body(mv, signer, cfg.public_url, _trusted(d))
        cmd = commands.queue_command(s, d, "rollback", body, signer, rollout_id=r.id, ttl_s=cfg.command_ttl_s,
                                     at=at)
    t.command_id = cmd.command_id
    t.commanded_at = at
    set_status(s, t, "rolling-back", why, at)
    return True


def _unconfirmed(t: RolloutTarget) -> bool:
    return t.status == "failed" and (t.reason or "").startswith(ROLLBACK_UNCONFIRMED)


def track_rollbacks(s: Session, r: Rollout, spec: RolloutSpec, targets: Sequence[RolloutTarget],
                    at: float, *, blind_now: bool = False) -> int:
    """Mark rolling-back targets rolled-back once the device's signed state answers our rollback
    (or stop-candidate) command and shows the old version; a device silent past the report
    timeout (counted from delivery, and not while the fleet is blind) is marked failed
    (rollback-unconfirmed) so it does not stay pending forever, and healed to rolled-back
    when its signed confirmation arrives later."""
    pending = [t for t in targets if t.status == "rolling-back" or _unconfirmed(t)]
    if not pending:
        return 0
    devices = load_devices(s, [t.device_id for t in pending])
    sent = delivered_at(s, [t.command_id or "" for t in pending])
    done = 0
    for t in pending:
        d = devices.get(t.device_id)
        if d is None:
            continue
        state = d.state if isinstance(d.state, dict) else {}
        cand = state.get("candidate")
        shadow_gone = not (isinstance(cand, dict) and cand.get("name") == r.model_name
                           and cand.get("version") == r.version)
        back = d.installed_version == t.from_version if t.from_version is not None else \
            d.installed_version != r.version
        answered = (state.get("last_command") or {}).get("id") == t.command_id
        if answered and back and shadow_gone and d.installed_version != r.version:
            # a late confirmation heals an unconfirmed target
            set_status(s, t, "rolled-back", f"confirmed late; {t.reason}" if _unconfirmed(t) else t.reason, at)
            done += 1
            continue
        if t.status != "rolling-back" or blind_now:
            continue
        timeout = spec.waves[t.wave_index].gates.report_timeout_s if t.wave_index < len(spec.waves) else 300.0
        start = sent.get(t.command_id or "")
        if start is not None and t.commanded_at is not None:
            start = max(start, t.commanded_at)
        if start is not None and at - start > timeout:
            set_status(s, t, "failed", f"{ROLLBACK_UNCONFIRMED}: no signed answer in {timeout:g}s ({t.reason})", at)
    return done


# ------------------------------------------------------------------------------------------
# the state machine


@dataclass
class TickContext:
    session: Session
    rollout: Rollout
    spec: RolloutSpec
    waves: list[RolloutWave]
    targets: list[RolloutTarget]
    signer: commands.FleetSigner
    cfg: EvaluatorConfig
    at: float
    actions: list[str] = field(default_factory=list)
    evidence: Any = None   # the WaveEvidence of this tick's evaluation

    def act(self, what: str) -> None:
        self.actions.append(what)
        log.info("rollout %s: %s", self.rollout.id, what, extra={"rollout": self.rollout.id, "action": what})


def _wave_targets(c: TickContext, index: int) -> list[RolloutTarget]:
    return [t for t in c.targets if t.wave_index == index and t.status != "skipped"]


def _command_wave(c: TickContext, wave: RolloutWave, phase: str) -> None:
    """Send the candidate to every device of the wave (install, or shadow/ab for a first phase)."""
    r, s = c.rollout, c.session
    wspec = c.spec.waves[wave.index]
    targets = _wave_targets(c, wave.index)
    devices = load_devices(s, [t.device_id for t in targets])
    for t in targets:
        d = devices.get(t.device_id)
        if d is None or d.status != "active":
            set_status(s, t, "skipped", "device gone or decommissioned", c.at)
            continue
        mv = s.get(ModelVersion, t.model_version_id) if t.model_version_id else None
        if mv is None:
            set_status(s, t, "skipped", f"no build for class {t.device_class}", c.at)
            continue
        if phase == "install" and t.status not in ("promoted",):
            if d.installed_name == r.model_name and d.installed_version != r.version:
                t.from_version = d.installed_version
                t.from_manifest_sha256 = d.installed_manifest_sha256
        ref = commands.model_ref(mv, c.cfg.public_url)
        if phase == "install":
            kind, body = "install", {"model": ref}
        elif phase == "shadow":
            kind, body = "shadow", {"model": ref, "fraction": wspec.fraction}
        else:
            kind, body = "ab", {"model": ref, "share": wspec.fraction}
        cmd = commands.queue_command(s, d, kind, body, c.signer, rollout_id=r.id, ttl_s=c.cfg.command_ttl_s, at=c.at)
        t.command_id = cmd.command_id
        t.commanded_at = c.at
        t.installed_at = None
        set_status(s, t, "commanded", f"{kind} v{r.version}", c.at)
    wave.phase = phase
    wave.status = "active"
    wave.started_at = c.at
    wave.gates_passed_at = None
    s.add(wave)
    c.act(f"wave {wave.index} {phase} commanded to {len(targets)} devices")


def _start_wave(c: TickContext, wave: RolloutWave) -> None:
    _command_wave(c, wave, c.spec.waves[wave.index].mode)
    audit.record(c.session, ACTOR, "rollout.wave.start", f"rollout:{c.rollout.id}", None,
                 {"wave": wave.index, "name": wave.name, "mode": wave.mode, "devices": wave.planned})


def _record(c: TickContext, wave: RolloutWave, verdict: Verdict) -> None:
    last = wave.last_verdict or {}
    before = {p.get("gate"): p.get("status") for p in last.get("results", [])}
    changed = last.get("status") != verdict.status or any(before.get(r.gate) != r.status for r in verdict.results)
    counts: dict[str, int] = {}
    for o in verdict.device_outcomes.values():
        k = o.split(":", 1)[0]
        counts[k] = counts.get(k, 0) + 1
    due = c.at - float(last.get("recorded_at", 0.0)) >= c.cfg.record_every_s
    recorded_at = last.get("recorded_at", 0.0)
    if changed or due:
        c.session.add(GateEvaluation(rollout_id=c.rollout.id, wave_index=wave.index, at=c.at,
                                     status=verdict.status, results=[r.to_dict() for r in verdict.results],
                                     devices=counts))
        recorded_at = c.at
    summary = verdict.to_dict()
    if len(summary["device_outcomes"]) > 200:
        summary["device_outcomes"] = dict(list(summary["device_outcomes"].items())[:200])
    wave.last_verdict = {**summary, "at": c.at, "recorded_at": recorded_at, "devices": counts,
                         "blind": last.get("blind") or [], "waiting": None}


def _apply_outcomes(c: TickContext, wave: RolloutWave, verdict: Verdict) -> None:
    """Move targets along commanded -> installed -> healthy (or failed) as the evidence says."""
    by_id = {d.device_id: d for d in c.evidence.devices}
    for t in _wave_targets(c, wave.index):
        o = verdict.device_outcomes.get(t.device_id)
        if o is None or t.status not in ("commanded", "installed", "healthy"):
            continue
        ev = by_id.get(t.device_id)
        if ev is not None and ev.installed and t.installed_at is None:
            t.installed_at = c.at
        if o == "healthy":
            set_status(c.session, t, "healthy", None, c.at)
        elif o.startswith("failed"):
            set_status(c.session, t, "failed", o.split(":", 1)[1], c.at)
        elif ev is not None and ev.installed and t.status == "commanded":
            set_status(c.session, t, "installed", None, c.at)


def _breach(c: TickContext, wave: RolloutWave, verdict: Verdict, devices: dict[str, Device]) -> None:
    r, s = c.rollout, c.session
    ev = c.evidence
    reason = {
        "kind": "gate-breach", "at": c.at, "wave": wave.index, "wave_name": wave.name, "phase": wave.phase,
        "gates": [b.to_dict() for b in verdict.breaches],
        "failed_devices": verdict.failed_devices[:100],
        "evidence": {"candidate": {"devices": ev.candidate.devices, "windows": ev.candidate.windows,
                                   "requests": ev.candidate.requests, "errors": ev.candidate.errors},
                     "control": {"devices": ev.control.devices, "windows": ev.control.windows,
                                 "requests": ev.control.requests, "errors": ev.control.errors}},
    }
    summary = ", ".join(f"{b.gate}={b.value} (limit {b.threshold})" for b in verdict.breaches)
    reason["summary"] = f"wave {wave.name} breached: {summary}"
    wave.status = "failed"
    wave.completed_at = c.at
    before = {"status": r.status, "wave": wave.index}
    r.status = "paused"
    r.reason = reason
    rolled = 0
    for t in _wave_targets(c, wave.index):
        if t.status in LIVE_TARGET:
            if rollback_target(s, r, t, devices.get(t.device_id), wave.phase, c.signer, c.cfg,
                               f"auto-rollback: {summary}", c.at):
                rolled += 1
    reason["rolled_back_devices"] = rolled
    audit.record(s, ACTOR, "rollout.breach", f"rollout:{r.id}", before, reason)
    alerts.raise_rollout_alert(s, r, reason, ACTOR)  # the pause shows as an open alert (issue 18)
    c.act(f"wave {wave.index} breached ({summary}); {rolled} devices rolled back; rollout paused")


def _finish_wave(c: TickContext, wave: RolloutWave) -> None:
    r = c.rollout
    wave.status = "passed"
    wave.completed_at = c.at
    c.session.add(wave)
    audit.record(c.session, ACTOR, "rollout.wave.passed", f"rollout:{r.id}", None,
                 {"wave": wave.index, "name": wave.name, "verdict": (wave.last_verdict or {}).get("results")})
    if wave.index + 1 >= len(c.waves):
        r.status = "completed"
        r.completed_at = c.at
        audit.record(c.session, ACTOR, "rollout.completed", f"rollout:{r.id}", None,
                     {"model": r.model_name, "version": r.version})
        alerts.close_rollout_alerts(c.session, r.id, ACTOR, "completed")
        c.act("rollout completed")
        return
    r.current_wave = wave.index + 1
    c.act(f"wave {wave.index} passed; starting wave {wave.index + 1}")
    _start_wave(c, c.waves[wave.index + 1])


def _evaluate(c: TickContext, wave: RolloutWave) -> None:
    r, s = c.rollout, c.session
    wspec = c.spec.waves[wave.index]
    g = wspec.gates
    wave_targets = [t for t in _wave_targets(c, wave.index) if t.status in ("commanded", "installed", "healthy",
                                                                            "failed")]
    if not wave_targets:
        c.act(f"wave {wave.index} has no devices; passing it")
        _finish_wave(c, wave)
        return
    why = blindness(s, c.at)
    if why is not None:
        if blind.enter(wave, why, c.at):
            c.act(f"wave {wave.index} {why.message}; gates and clocks stopped")
            audit.record(s, ACTOR, "rollout.waiting", f"rollout:{r.id}", None, {"wave": wave.index, **why.to_dict()})
            blind.raise_alert(s, r, wave, why, c.at, ACTOR)
        return
    if blind.leave(wave, c.at):
        blind.resolve_alert(s, wave, ACTOR)
        again = _republish_unanswered(c, wave_targets)
        c.act(f"wave {wave.index}: ingest sees the devices again; gates resume ({again} commands re-sent)")
    others = [t for t in c.targets if t.wave_index > wave.index and t.status == "pending"]
    builds = {mv.device_class: mv.manifest_sha256 for mv in s.exec(
        select(ModelVersion).where(ModelVersion.name == r.model_name, ModelVersion.version == r.version)).all()}
    q = EvidenceQuery(r.model_name, r.version, builds, wave.phase, float(wave.started_at or c.at),
                      _baseline(s, r), blind=blind.intervals(wave))
    ev, devices = collect(s, q, wave_targets, others, c.at)
    c.evidence = ev
    verdict = evaluate_wave(ev, g)
    _apply_outcomes(c, wave, verdict)
    _record(c, wave, verdict)
    if verdict.status == FAIL:
        _breach(c, wave, verdict, devices)
        return
    if verdict.status != PASS:
        if wave.status == "soaking":
            wave.status, wave.gates_passed_at = "active", None
        return
    if wave.gates_passed_at is None:
        wave.gates_passed_at = c.at
        wave.status = "soaking"
    if c.at - wave.gates_passed_at < g.soak_s:
        return
    if wave.phase != "install":
        for t in wave_targets:
            set_status(s, t, "promoted", f"{wave.phase} passed", c.at)
        audit.record(s, ACTOR, "rollout.wave.promote", f"rollout:{r.id}", {"phase": wave.phase},
                     {"wave": wave.index, "verdict": (wave.last_verdict or {}).get("results")})
        _command_wave(c, wave, "install")
        return
    if g.require_approval and wave.approved_at is None:
        wave.status = "awaiting-approval"
        r.status = "awaiting-approval"
        audit.record(s, ACTOR, "rollout.awaiting-approval", f"rollout:{r.id}", None, {"wave": wave.index})
        c.act(f"wave {wave.index} passed its gates; waiting for approval")
        return
    _finish_wave(c, wave)


def _republish_unanswered(c: TickContext, targets: Sequence[RolloutTarget]) -> int:
    """After a blind period, send again the commands no device has answered yet: the outage may
    have been a broker restart that lost what it queued. Their clocks restart at the new PUBACK."""
    waiting = [t for t in targets if t.status == "commanded" and t.command_id]
    devices = load_devices(c.session, [t.device_id for t in waiting])
    unanswered = []
    for t in waiting:
        d = devices.get(t.device_id)
        last = ((d.state or {}) if d is not None and isinstance(d.state, dict) else {}).get("last_command") or {}
        if d is not None and last.get("id") != t.command_id:
            unanswered.append(t.command_id or "")
    return commands.requeue(c.session, unanswered, c.at)


def _baseline(s: Session, r: Rollout) -> dict[str, Any] | None:
    mv = s.exec(select(ModelVersion).where(ModelVersion.name == r.model_name,
                                           ModelVersion.version == r.version)).first()
    if mv is None:
        return None
    base = (mv.manifest or {}).get("drift_baseline")
    # the build-time metrics ride along: the online_accuracy/slice_gap gates compare with them
    return {**(base or {}), "build_metrics": (mv.manifest or {}).get("metrics") or {}}


def step(s: Session, r: Rollout, signer: commands.FleetSigner, cfg: EvaluatorConfig, at: float) -> list[str]:
    """One decision for one rollout, inside the caller's transaction."""
    waves = list(s.exec(select(RolloutWave).where(RolloutWave.rollout_id == r.id).order_by(RolloutWave.index)))
    targets = list(s.exec(select(RolloutTarget).where(RolloutTarget.rollout_id == r.id)))
    c = TickContext(s, r, RolloutSpec.from_dict(r.spec), waves, targets, signer, cfg, at)
    blind_now = any(t.status == "rolling-back" for t in targets) and blindness(s, at) is not None
    if track_rollbacks(s, r, c.spec, targets, at, blind_now=blind_now):
        c.act("rollbacks confirmed by signed state")
    if r.status in ("running", "awaiting-approval") and waves:
        wave = waves[r.current_wave]
        if wave.status == "pending":
            _start_wave(c, wave)
        elif wave.status == "awaiting-approval":
            if wave.approved_at is not None:
                r.status = "running"
                _finish_wave(c, wave)
        elif wave.status in ("active", "soaking"):
            _evaluate(c, wave)
    r.last_tick_at = at
    r.last_holder = cfg.holder
    r.ticks += 1
    r.updated_at = at if c.actions else r.updated_at
    s.add(r)
    return c.actions


# ------------------------------------------------------------------------------------------
# the loop


class Evaluator:
    """Ticks every live rollout; safe to run in several processes against one database."""

    def __init__(self, engine: Engine, publisher: commands.Publisher | None, signer: commands.FleetSigner,
                 cfg: EvaluatorConfig | None = None) -> None:
        self.engine = engine
        self.publisher = publisher
        self.signer = signer
        self.cfg = cfg or EvaluatorConfig()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.owns_publisher = False     # start_for_app made it: stop() closes it

    def live_rollouts(self) -> list[int]:
        with Session(self.engine) as s:
            live = s.exec(select(Rollout.id).where(Rollout.status.in_(("running", "awaiting-approval")))).all()
            tracking = s.exec(select(RolloutTarget.rollout_id).where(RolloutTarget.status == "rolling-back")
                              .distinct()).all()
            # a late confirmation can still heal an unconfirmed rollback while its command is valid
            healing = s.exec(select(RolloutTarget.rollout_id).where(
                RolloutTarget.status == "failed", RolloutTarget.reason.startswith(ROLLBACK_UNCONFIRMED),
                RolloutTarget.commanded_at > time.time() - self.cfg.command_ttl_s).distinct()).all()
            # unsent commands (a crashed holder's): the next lease holder publishes them
            unsent = s.exec(select(RolloutCommand.rollout_id).where(
                RolloutCommand.sent_at.is_(None), RolloutCommand.rollout_id.is_not(None),
                RolloutCommand.expires_at > time.time()).distinct()).all()
        return sorted(set(live) | set(tracking) | set(healing) | {x for x in unsent if x is not None})

    def tick(self, at: float | None = None) -> list[str]:
        actions: list[str] = []
        for rid in self.live_rollouts():
            actions.extend(self.tick_rollout(rid, at))
        # operator commands (rollback-version, rotate-key): published by one process at a time
        if self.publisher is not None and acquire_lease(self.engine, OPERATOR_LEASE, self.cfg.holder,
                                                        self.cfg.lease_ttl_s, at):
            commands.flush_outbox(self.engine, self.publisher, unowned=True)
        return actions

    def tick_rollout(self, rollout_id: int, at: float | None = None) -> list[str]:
        now_ = time.time() if at is None else at
        lease = f"rollout:{rollout_id}"
        if not acquire_lease(self.engine, lease, self.cfg.holder, self.cfg.lease_ttl_s, now_):
            return []
        actions: list[str] = []
        with Session(self.engine, expire_on_commit=False) as s:
            q = select(Rollout).where(Rollout.id == rollout_id)
            if self.engine.dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True)
            r = s.exec(q).first()
            if r is None:
                return []
            if not holds_lease(s, lease, self.cfg.holder, now_):
                return []
            try:
                actions = step(s, r, self.signer, self.cfg, now_)
                s.commit()
            except Exception:
                s.rollback()
                log.exception("rollout tick failed", extra={"rollout": rollout_id})
                raise
        if self.publisher is not None:
            commands.flush_outbox(self.engine, self.publisher, rollout_id=rollout_id)
        return actions

    def run(self, interval_s: float = 1.0, stop: threading.Event | None = None) -> None:
        stop = stop or self._stop
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # keep the loop alive; the failure is logged with its rollout
                log.exception("evaluator tick failed")
            stop.wait(interval_s)

    def start(self, interval_s: float = 1.0) -> threading.Thread:
        """Run in a daemon thread (the fleet `serve` process); stop() ends it."""
        self._thread = threading.Thread(target=self.run, args=(interval_s,), name="rollout-evaluator", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        """Stop the loop and give up this process's leases, so a successor takes over at once
        (after a crash it waits for the lease to expire instead)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with Session(self.engine) as s:
            s.execute(update(EvaluatorLease).where(EvaluatorLease.holder == self.cfg.holder)
                      .values(expires_at=0.0))
            s.commit()
        if self.owns_publisher and hasattr(self.publisher, "close"):
            self.publisher.close()  # type: ignore[union-attr]
            self.owns_publisher = False


def start_for_app(app: Any, interval_s: float = 1.0) -> Evaluator:
    """Start an evaluator beside a fleet app (settings from its FleetContext)."""
    from fleet.app import fleet_context

    ctx = fleet_context(app)
    st = ctx.settings
    with Session(ctx.engine, expire_on_commit=False) as s:
        signer = commands.load_signer(s, st.signing_key_path or st.data_dir / "keys" / "fleet.key")
        s.commit()
    publisher = commands.MqttPublisher.from_url(st.mqtt_url, st.mqtt_ca_file)
    ev = Evaluator(ctx.engine, publisher, signer, EvaluatorConfig(public_url=st.public_url))
    ev.owns_publisher = True
    ctx.extras["rollout_evaluator"] = ev
    ctx.extras["rollout_publisher"] = publisher
    ev.start(interval_s)
    return ev


def main(argv: list[str] | None = None) -> int:
    """`python -m fleet.rollouts.evaluator`: a standalone evaluator process (scale-out, tests)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--database-url", required=True)
    p.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883")
    p.add_argument("--key", required=True, help="fleet signing key (PEM) used when none is registered")
    p.add_argument("--public-url", default="http://127.0.0.1:8080")
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: forever)")
    p.add_argument("--record-every", type=float, default=5.0)
    p.add_argument("--lease-ttl", type=float, default=5.0)
    p.add_argument("--holder", default="")
    args = p.parse_args(argv)
    logging.basicConfig(level=os.environ.get("EDGEFLEET_LOG_LEVEL", "WARNING"))
    from fleet.db import make_engine

    engine = make_engine(args.database_url)
    with Session(engine, expire_on_commit=False) as s:
        signer = commands.load_signer(s, args.key)
        s.commit()
    publisher = commands.MqttPublisher.from_url(args.mqtt_url)
    cfg = EvaluatorConfig(public_url=args.public_url, record_every_s=args.record_every, lease_ttl_s=args.lease_ttl)
    if args.holder:
        cfg.holder = args.holder
    ev = Evaluator(engine, publisher, signer, cfg)
    stop = threading.Event()
    if args.duration:
        threading.Timer(args.duration, stop.set).start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        ev.run(args.interval, stop)
    finally:
        ev.stop()
        publisher.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
