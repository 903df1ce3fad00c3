"""One decision for one rollout (`step`), inside the caller's transaction: confirm rollbacks,
then start, judge, soak, promote, hold for approval, pass or breach the current wave. Which
moves are possible is the table in states.py; waves.py carries them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlmodel import Session, select

from edgefleet.gates import FAIL, PASS
from fleet import audit
from fleet.ingest.health import blindness
from fleet.models import ModelVersion
from fleet.rollouts import blind, commands
from fleet.rollouts.config import ACTOR, EvaluatorConfig
from fleet.rollouts.evidence import EvidenceQuery, collect, load_devices
from fleet.rollouts.gates import device_outcome, evaluate_wave
from fleet.rollouts.machine import can, target_outcomes, transition
from fleet.rollouts.models import Rollout, RolloutTarget, RolloutWave
from fleet.rollouts.rollback import track_rollbacks
from fleet.rollouts.spec import RolloutSpec
from fleet.rollouts.states import LIVE_ROLLOUTS, RolloutEvent, TargetState, WaveEvent, WaveState
from fleet.rollouts.verdict import Verdict
from fleet.rollouts.waves import (
    TickContext,
    apply_outcomes,
    breach,
    finish_wave,
    promote_wave,
    record,
    start_wave,
)


def step(s: Session, r: Rollout, signer: commands.FleetSigner, cfg: EvaluatorConfig, at: float) -> list[str]:
    """One decision for one rollout, inside the caller's transaction."""
    waves = list(s.exec(select(RolloutWave).where(RolloutWave.rollout_id == r.id).order_by(RolloutWave.index)))
    targets = list(s.exec(select(RolloutTarget).where(RolloutTarget.rollout_id == r.id)))
    c = TickContext(s, r, RolloutSpec.from_stored(r.spec), waves, targets, signer, cfg, at)
    blind_now = any(t.status == TargetState.ROLLING_BACK for t in targets) and blindness(s, at) is not None
    if track_rollbacks(s, r, c.spec, targets, at, blind_now=blind_now):
        c.act("rollbacks confirmed by signed state")
    if r.status in LIVE_ROLLOUTS and waves:
        wave = waves[r.current_wave]
        if wave.status == WaveState.PENDING:
            start_wave(c, wave)
        elif wave.status == WaveState.AWAITING_APPROVAL:
            if wave.approved_at is not None:
                if can(r, RolloutEvent.APPROVE):   # not when an operator paused and resumed it meanwhile
                    transition(s, r, RolloutEvent.APPROVE, at=at,
                               reason=f"wave {wave.index} approved by {wave.approved_by}")
                finish_wave(c, wave)
        elif wave.status in (WaveState.ACTIVE, WaveState.SOAKING):
            evaluate(c, wave)
    r.last_tick_at = at
    r.last_holder = cfg.holder
    r.ticks += 1
    r.updated_at = at if c.actions else r.updated_at
    s.add(r)
    return c.actions


def _sees(c: TickContext, wave: RolloutWave, judged: Sequence[RolloutTarget]) -> bool:
    """False while ingest is blind: the wave waits, its gates and clocks stopped (blind.py)."""
    r, s = c.rollout, c.session
    why = blindness(s, c.at)
    if why is not None:
        if blind.enter(wave, why, c.at):
            c.act(f"wave {wave.index} {why.message}; gates and clocks stopped")
            audit.record(s, ACTOR, "rollout.waiting", f"rollout:{r.id}", None, {"wave": wave.index, **why.to_dict()})
            blind.raise_alert(s, r, wave, why, c.at, ACTOR)
        return False
    if blind.leave(wave, c.at):
        blind.resolve_alert(s, wave, ACTOR)
        again = _republish_unanswered(c, judged)
        c.act(f"wave {wave.index}: ingest sees the devices again; gates resume ({again} commands re-sent)")
    return True


def judge(c: TickContext, wave: RolloutWave, judged: list[RolloutTarget]) -> tuple[Verdict, dict[str, Any]]:
    """Read the evidence, move the targets as it says (writing their history), then run the
    wave's enabled gates; installs and success count the outcomes read back from that history."""
    r, s = c.rollout, c.session
    g = c.spec.waves[wave.index].gates
    others = [t for t in c.targets if t.wave_index > wave.index and t.status == TargetState.PENDING]
    builds = {mv.device_class: mv.manifest_sha256 for mv in s.exec(
        select(ModelVersion).where(ModelVersion.name == r.model_name, ModelVersion.version == r.version)).all()}
    q = EvidenceQuery(r.model_name, r.version, builds, wave.phase, float(wave.started_at or c.at),
                      _baseline(s, r), blind=blind.intervals(wave))
    ev, devices = collect(s, q, judged, others, c.at)
    c.evidence = ev
    apply_outcomes(c, wave, {d.device_id: device_outcome(d, g, c.at) for d in ev.devices})
    ev.outcomes = target_outcomes(s, judged)
    return evaluate_wave(ev, g), devices


def evaluate(c: TickContext, wave: RolloutWave) -> None:
    s = c.session
    g = c.spec.waves[wave.index].gates
    judged = c.judged_targets(wave.index)
    if not judged:
        c.act(f"wave {wave.index} has no devices; passing it")
        finish_wave(c, wave)
        return
    if not _sees(c, wave, judged):
        return
    verdict, devices = judge(c, wave, judged)
    record(c, wave, verdict)
    if verdict.status == FAIL:
        breach(c, wave, verdict, devices)
        return
    if verdict.status != PASS:
        if wave.status == WaveState.SOAKING:
            transition(s, wave, WaveEvent.UNSOAK, at=c.at, reason=f"gates {verdict.status}")
        return
    if wave.status == WaveState.ACTIVE:
        transition(s, wave, WaveEvent.SOAK, at=c.at)
    if c.at - (wave.gates_passed_at or c.at) < g.soak_s:
        return
    if wave.phase != "install":
        promote_wave(c, wave, judged)
    elif g.require_approval and wave.approved_at is None:
        transition(s, wave, WaveEvent.AWAIT_APPROVAL, at=c.at)
        transition(s, c.rollout, RolloutEvent.AWAIT_APPROVAL, at=c.at, reason=f"wave {wave.index} passed its gates")
        audit.record(s, ACTOR, "rollout.awaiting-approval", f"rollout:{c.rollout.id}", None, {"wave": wave.index})
        c.act(f"wave {wave.index} passed its gates; waiting for approval")
    else:
        finish_wave(c, wave)


def _republish_unanswered(c: TickContext, targets: Sequence[RolloutTarget]) -> int:
    """After a blind period, send again the commands no device has answered yet: the outage may
    have been a broker restart that lost what it queued. Their clocks restart at the new PUBACK."""
    waiting = [t for t in targets if t.status == TargetState.COMMANDED and t.command_id]
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
