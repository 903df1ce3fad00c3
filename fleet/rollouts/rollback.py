"""Sending a rollout's devices back, and knowing when they are: the automatic rollback of a
breached wave and the operator's rollback of a whole rollout both queue through here, and every
tick confirms them from the devices' signed state (track_rollbacks).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, select

from fleet.models import Device, ModelVersion
from fleet.rollouts import commands
from fleet.rollouts.config import EvaluatorConfig
from fleet.rollouts.evidence import delivered_at, load_devices
from fleet.rollouts.machine import transition
from fleet.rollouts.models import ROLLBACK_UNCONFIRMED, Rollout, RolloutTarget
from fleet.rollouts.spec import RolloutSpec
from fleet.rollouts.states import TargetEvent, TargetState

# signed failure reasons after which the device still runs the version it had before
DEVICE_REPORTED = ("install-failed", "install-refused", "install-rolled-back", "command-refused", "bundle-refused",
                   "local-rollback")


def find_build(s: Session, name: str, version: int, device_class: str) -> ModelVersion | None:
    return s.exec(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version,
                                             ModelVersion.device_class == device_class)).first()


def _trusted(d: Device) -> list[str] | None:
    return (d.state or {}).get("trusted_fleet_keys") if isinstance(d.state, dict) else None


def rollback_target(s: Session, r: Rollout, t: RolloutTarget, d: Device | None, phase: str,
                    signer: commands.FleetSigner, cfg: EvaluatorConfig, why: str, at: float) -> bool:
    """Send the device back to what it ran before this rollout; True when a command was queued."""
    if d is None:
        return _no_command(s, t, TargetEvent.FAIL, f"rollback-impossible:unknown-device ({why})", at)
    if phase != "install":
        cmd = commands.queue_command(s, d, "stop-candidate", {}, signer, rollout_id=r.id, ttl_s=cfg.command_ttl_s,
                                     at=at)
    else:
        if t.from_version is None:
            return _no_command(s, t, TargetEvent.FAIL, f"rollback-impossible:no-previous-version ({why})", at)
        if t.status == TargetState.FAILED and t.reason in DEVICE_REPORTED and t.installed_at is None \
                and d.installed_name == r.model_name and d.installed_version == t.from_version:
            # the device itself signed that the install failed and it still runs the old version
            return _no_command(s, t, TargetEvent.ROLLED_BACK, f"never-left-previous ({why})", at)
        mv = find_build(s, r.model_name, t.from_version, t.device_class)
        if mv is None:
            return _no_command(s, t, TargetEvent.FAIL, f"rollback-impossible:no-build-of-v{t.from_version} ({why})", at)
        body = commands.rollback_body(mv, signer, cfg.public_url, _trusted(d))
        cmd = commands.queue_command(s, d, "rollback", body, signer, rollout_id=r.id, ttl_s=cfg.command_ttl_s,
                                     at=at)
    return transition(s, t, TargetEvent.ROLL_BACK, at=at, reason=why, command_id=cmd.command_id)


def _no_command(s: Session, t: RolloutTarget, event: str, reason: str, at: float) -> bool:
    transition(s, t, event, at=at, reason=reason)
    return False


def unconfirmed(t: RolloutTarget) -> bool:
    return t.status == TargetState.FAILED and (t.reason or "").startswith(ROLLBACK_UNCONFIRMED)


def _back(r: Rollout, t: RolloutTarget, d: Device) -> bool:
    """The device's signed state answers our rollback command and shows the old version."""
    state = d.state if isinstance(d.state, dict) else {}
    cand = state.get("candidate")
    shadow_gone = not (isinstance(cand, dict) and cand.get("name") == r.model_name
                       and cand.get("version") == r.version)
    back = d.installed_version == t.from_version if t.from_version is not None else \
        d.installed_version != r.version
    answered = (state.get("last_command") or {}).get("id") == t.command_id
    return answered and back and shadow_gone and d.installed_version != r.version


def track_rollbacks(s: Session, r: Rollout, spec: RolloutSpec, targets: Sequence[RolloutTarget],
                    at: float, *, blind_now: bool = False) -> int:
    """Mark rolling-back targets rolled-back once the device's signed state answers our rollback
    (or stop-candidate) command and shows the old version; a device silent past the report
    timeout (counted from delivery, and not while the fleet is blind) is marked failed
    (rollback-unconfirmed) so it does not stay pending forever, and healed to rolled-back
    when its signed confirmation arrives later."""
    pending = [t for t in targets if t.status == TargetState.ROLLING_BACK or unconfirmed(t)]
    if not pending:
        return 0
    devices = load_devices(s, [t.device_id for t in pending])
    sent = delivered_at(s, [t.command_id or "" for t in pending])
    done = 0
    for t in pending:
        d = devices.get(t.device_id)
        if d is None:
            continue
        if _back(r, t, d):   # a late confirmation heals an unconfirmed target
            transition(s, t, TargetEvent.ROLLED_BACK, at=at,
                       reason=f"confirmed late; {t.reason}" if unconfirmed(t) else t.reason)
            done += 1
            continue
        if t.status != TargetState.ROLLING_BACK or blind_now:
            continue
        timeout = spec.waves[t.wave_index].gates.report_timeout_s if t.wave_index < len(spec.waves) else 300.0
        start = sent.get(t.command_id or "")
        if start is not None and t.commanded_at is not None:
            start = max(start, t.commanded_at)
        if start is not None and at - start > timeout:
            transition(s, t, TargetEvent.FAIL, at=at,
                       reason=f"{ROLLBACK_UNCONFIRMED}: no signed answer in {timeout:g}s ({t.reason})")
    return done
