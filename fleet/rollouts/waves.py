"""What a tick does to one wave: command it, move its targets along as the evidence says, keep
its gate values, and finish it (pass, or breach: pause the rollout and roll the wave back).
Every status change goes through machine.transition; tick.py decides which of these happens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session

from fleet import audit
from fleet.drift import alerts
from fleet.models import Device, ModelVersion
from fleet.rollouts import commands
from fleet.rollouts.config import ACTOR, EvaluatorConfig
from fleet.rollouts.evidence import load_devices
from fleet.rollouts.machine import transition
from fleet.rollouts.models import GateEvaluation, Rollout, RolloutTarget, RolloutWave
from fleet.rollouts.rollback import rollback_target
from fleet.rollouts.spec import RolloutSpec
from fleet.rollouts.states import (
    JUDGED_TARGETS,
    RolloutEvent,
    TargetEvent,
    TargetState,
    WaveEvent,
)
from fleet.rollouts.verdict import HEALTHY, Verdict

log = logging.getLogger("fleet.rollouts.evaluator")
MAX_STORED_OUTCOMES = 200


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

    def wave_targets(self, index: int) -> list[RolloutTarget]:
        return [t for t in self.targets if t.wave_index == index and t.status != TargetState.SKIPPED]

    def judged_targets(self, index: int) -> list[RolloutTarget]:
        return [t for t in self.wave_targets(index) if t.status in JUDGED_TARGETS]


def _command_body(kind: str, ref: dict[str, Any], fraction: float) -> dict[str, Any]:
    bodies: dict[str, dict[str, Any]] = {"install": {"model": ref}, "shadow": {"model": ref, "fraction": fraction},
                                         "ab": {"model": ref, "share": fraction}}
    return bodies[kind]


def command_wave(c: TickContext, wave: RolloutWave, phase: str, event: str) -> None:
    """Send the candidate to every device of the wave (install, or shadow/ab for a first phase);
    `event` is the wave's move (start, or promote after a shadow/A-B phase)."""
    r, s = c.rollout, c.session
    wspec = c.spec.waves[wave.index]
    targets = c.wave_targets(wave.index)
    devices = load_devices(s, [t.device_id for t in targets])
    for t in targets:
        d = devices.get(t.device_id)
        if d is None or d.status != "active":
            transition(s, t, TargetEvent.SKIP, at=c.at, reason="device gone or decommissioned")
            continue
        mv = s.get(ModelVersion, t.model_version_id) if t.model_version_id else None
        if mv is None:
            transition(s, t, TargetEvent.SKIP, at=c.at, reason=f"no build for class {t.device_class}")
            continue
        if phase == "install" and t.status != TargetState.PROMOTED \
                and d.installed_name == r.model_name and d.installed_version != r.version:
            t.from_version = d.installed_version
            t.from_manifest_sha256 = d.installed_manifest_sha256
        body = _command_body(phase, commands.model_ref(mv, c.cfg.public_url), wspec.fraction)
        cmd = commands.queue_command(s, d, phase, body, c.signer, rollout_id=r.id, ttl_s=c.cfg.command_ttl_s, at=c.at)
        transition(s, t, TargetEvent.COMMAND, at=c.at, reason=f"{phase} v{r.version}", command_id=cmd.command_id)
    transition(s, wave, event, at=c.at, reason=f"{phase} commanded to {len(targets)} devices", phase=phase)
    c.act(f"wave {wave.index} {phase} commanded to {len(targets)} devices")


def start_wave(c: TickContext, wave: RolloutWave) -> None:
    command_wave(c, wave, c.spec.waves[wave.index].mode, WaveEvent.START)
    audit.record(c.session, ACTOR, "rollout.wave.start", f"rollout:{c.rollout.id}", None,
                 {"wave": wave.index, "name": wave.name, "mode": wave.mode, "devices": wave.planned})


def promote_wave(c: TickContext, wave: RolloutWave, targets: list[RolloutTarget]) -> None:
    """A shadow/A-B phase passed: install the candidate on the same devices, judged again."""
    for t in targets:
        transition(c.session, t, TargetEvent.PROMOTE, at=c.at, reason=f"{wave.phase} passed")
    audit.record(c.session, ACTOR, "rollout.wave.promote", f"rollout:{c.rollout.id}", {"phase": wave.phase},
                 {"wave": wave.index, "verdict": (wave.last_verdict or {}).get("results")})
    command_wave(c, wave, "install", WaveEvent.PROMOTE)


def apply_outcomes(c: TickContext, wave: RolloutWave, outcomes: dict[str, str]) -> None:
    """Move targets along commanded -> installed -> healthy (or failed) as the signed evidence
    says; the history these moves write is what the installs and success gates count."""
    by_id = {d.device_id: d for d in c.evidence.devices}
    for t in c.wave_targets(wave.index):
        o = outcomes.get(t.device_id)
        if o is None or t.status not in (TargetState.COMMANDED, TargetState.INSTALLED, TargetState.HEALTHY):
            continue
        ev = by_id.get(t.device_id)
        if ev is not None and ev.installed and t.installed_at is None:
            t.installed_at = c.at
        if o == HEALTHY:
            transition(c.session, t, TargetEvent.HEALTHY, at=c.at)
        elif o.startswith("failed"):
            transition(c.session, t, TargetEvent.FAIL, at=c.at, reason=o.split(":", 1)[1])
        elif ev is not None and ev.installed and t.status == TargetState.COMMANDED:
            transition(c.session, t, TargetEvent.INSTALLED, at=c.at)


def record(c: TickContext, wave: RolloutWave, verdict: Verdict) -> None:
    """Keep the verdict on the wave, and its gate values in GateEvaluation on every change and at
    least every record_every_s."""
    last = wave.last_verdict or {}
    before = {p.get("gate"): p.get("status") for p in last.get("results", [])}
    changed = last.get("status") != verdict.status or any(before.get(r.gate) != r.status for r in verdict.results)
    counts: dict[str, int] = {}
    for o in verdict.device_outcomes.values():
        k = o.split(":", 1)[0]
        counts[k] = counts.get(k, 0) + 1
    recorded_at = last.get("recorded_at", 0.0)
    if changed or c.at - float(recorded_at) >= c.cfg.record_every_s:
        c.session.add(GateEvaluation(rollout_id=c.rollout.id, wave_index=wave.index, at=c.at,
                                     status=verdict.status, results=[r.to_dict() for r in verdict.results],
                                     devices=counts))
        recorded_at = c.at
    summary = verdict.to_dict()
    if len(summary["device_outcomes"]) > MAX_STORED_OUTCOMES:
        summary["device_outcomes"] = dict(list(summary["device_outcomes"].items())[:MAX_STORED_OUTCOMES])
    wave.last_verdict = {**summary, "at": c.at, "recorded_at": recorded_at, "devices": counts,
                         "blind": last.get("blind") or [], "waiting": None}


def _breach_reason(c: TickContext, wave: RolloutWave, verdict: Verdict) -> tuple[dict[str, Any], str]:
    ev = c.evidence
    gates = ", ".join(f"{b.gate}={b.value} (limit {b.threshold})" for b in verdict.breaches)
    cohort = {name: {"devices": x.devices, "windows": x.windows, "requests": x.requests, "errors": x.errors}
              for name, x in (("candidate", ev.candidate), ("control", ev.control))}
    return {"kind": "gate-breach", "at": c.at, "wave": wave.index, "wave_name": wave.name, "phase": wave.phase,
            "gates": [b.to_dict() for b in verdict.breaches], "failed_devices": verdict.failed_devices[:100],
            "evidence": cohort, "summary": f"wave {wave.name} breached: {gates}"}, gates


def breach(c: TickContext, wave: RolloutWave, verdict: Verdict, devices: dict[str, Device]) -> None:
    """A gate failed: the wave fails, the rollout pauses, the wave's devices are sent back."""
    r, s = c.rollout, c.session
    reason, gates = _breach_reason(c, wave, verdict)
    before = {"status": r.status, "wave": wave.index}
    transition(s, wave, WaveEvent.BREACH, at=c.at, reason=reason["summary"])
    rolled = 0
    for t in c.wave_targets(wave.index):
        if t.status in JUDGED_TARGETS and rollback_target(s, r, t, devices.get(t.device_id), wave.phase, c.signer,
                                                          c.cfg, f"auto-rollback: {gates}", c.at):
            rolled += 1
    reason["rolled_back_devices"] = rolled
    transition(s, r, RolloutEvent.BREACH, at=c.at, reason=reason["summary"], why=reason)
    audit.record(s, ACTOR, "rollout.breach", f"rollout:{r.id}", before, reason)
    alerts.raise_rollout_alert(s, r, reason, ACTOR)  # the pause shows as an open alert (issue 18)
    c.act(f"wave {wave.index} breached ({gates}); {rolled} devices rolled back; rollout paused")


def finish_wave(c: TickContext, wave: RolloutWave) -> None:
    """The wave passed: start the next one, or complete the rollout after the last."""
    r = c.rollout
    transition(c.session, wave, WaveEvent.PASS, at=c.at)
    audit.record(c.session, ACTOR, "rollout.wave.passed", f"rollout:{r.id}", None,
                 {"wave": wave.index, "name": wave.name, "verdict": (wave.last_verdict or {}).get("results")})
    if wave.index + 1 >= len(c.waves):
        transition(c.session, r, RolloutEvent.COMPLETE, at=c.at)
        audit.record(c.session, ACTOR, "rollout.completed", f"rollout:{r.id}", None,
                     {"model": r.model_name, "version": r.version})
        alerts.close_rollout_alerts(c.session, r.id, ACTOR, "completed")
        c.act("rollout completed")
        return
    r.current_wave = wave.index + 1
    c.act(f"wave {wave.index} passed; starting wave {wave.index + 1}")
    start_wave(c, c.waves[wave.index + 1])
