"""The one place a rollout, wave or target changes status: `transition()` looks the move up in
the tables of states.py, refuses what they do not hold (before touching anything), applies the
move's effects and appends the status history. The installs and success gates read that history
back (`target_outcomes`), as hawkBit computes its thresholds from the action status trail.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlmodel import Session, select

from fleet.rollouts.models import Rollout, RolloutStatusChange, RolloutTarget, RolloutWave, TargetStatusChange
from fleet.rollouts.states import Effect, IllegalTransition, Move, TargetState, allowed, next_move
from fleet.rollouts.verdict import HEALTHY, PENDING

Row = Rollout | RolloutWave | RolloutTarget
_CHUNK = 500


def kind_of(row: Row) -> str:
    if isinstance(row, RolloutTarget):
        return "target"
    if isinstance(row, RolloutWave):
        return "wave"
    if isinstance(row, Rollout):
        return "rollout"
    raise TypeError(f"no state machine for {type(row).__name__}")


def can(row: Row, event: str) -> bool:
    """Whether `event` is legal for the row's current status (for refusing an operator action)."""
    return allowed(kind_of(row), row.status, event)


def _stamp_command(row: Any, at: float, args: Mapping[str, Any]) -> None:
    row.command_id, row.commanded_at = args["command_id"], at


def _clear_installed(row: Any, at: float, args: Mapping[str, Any]) -> None:
    row.installed_at = None


def _start_clock(row: Any, at: float, args: Mapping[str, Any]) -> None:
    row.phase, row.started_at, row.gates_passed_at = args["phase"], at, None


def _start_soak(row: Any, at: float, args: Mapping[str, Any]) -> None:
    row.gates_passed_at = at


def _stop_soak(row: Any, at: float, args: Mapping[str, Any]) -> None:
    row.gates_passed_at = None


def _reset_wave(row: Any, at: float, args: Mapping[str, Any]) -> None:
    row.phase, row.started_at, row.gates_passed_at, row.completed_at = row.mode, None, None, None


def _stamp_completed(row: Any, at: float, args: Mapping[str, Any]) -> None:
    row.completed_at = at


def _set_reason(row: Any, at: float, args: Mapping[str, Any]) -> None:
    row.reason = dict(args["why"])


def _clear_reason(row: Any, at: float, args: Mapping[str, Any]) -> None:
    row.reason = None


# effect -> (the transition() argument it needs, what it does)
EFFECTS: Mapping[Effect, tuple[str | None, Callable[[Any, float, Mapping[str, Any]], None]]] = {
    Effect.STAMP_COMMAND: ("command_id", _stamp_command),
    Effect.CLEAR_INSTALLED: (None, _clear_installed),
    Effect.START_CLOCK: ("phase", _start_clock),
    Effect.START_SOAK: (None, _start_soak),
    Effect.STOP_SOAK: (None, _stop_soak),
    Effect.RESET_WAVE: (None, _reset_wave),
    Effect.STAMP_COMPLETED: (None, _stamp_completed),
    Effect.SET_REASON: ("why", _set_reason),
    Effect.CLEAR_REASON: (None, _clear_reason),
}


def transition(s: Session, row: Row, event: str, *, at: float, reason: str | None = None, **args: Any) -> bool:
    """Apply `event` to the row: the status move of its table, the move's effects, one history
    row. Refuses an illegal move or a missing effect argument with IllegalTransition before
    changing anything. A target moved to the status it has, with no new reason, is a no-op
    (False): the evaluator reports the same outcome every tick and the history stays short."""
    kind = kind_of(row)
    before = str(row.status)
    move = next_move(kind, before, event)
    missing = [need for e in move.effects if (need := EFFECTS[e][0]) and need not in args]
    if missing:
        raise IllegalTransition(f"{kind} {event}: missing {', '.join(missing)}")
    if kind == "target" and move.to == before and (reason is None or reason == row.reason) \
            and not move.effects:
        return False
    for effect in move.effects:
        EFFECTS[effect][1](row, at, args)
    s.add(_history(row, kind, move, before, event, at, reason))
    row.status = str(move.to)
    if kind == "target":
        row.reason = reason
        row.updated_at = at
    s.add(row)
    return True


def _history(row: Any, kind: str, move: Move, before: str, event: str, at: float,
             reason: str | None) -> RolloutStatusChange | TargetStatusChange:
    if kind == "target":
        return TargetStatusChange(rollout_id=row.rollout_id, target_id=row.id or 0, device_id=row.device_id, at=at,
                                  from_status=before, to_status=str(move.to), reason=reason)
    rollout_id = row.id if kind == "rollout" else row.rollout_id
    return RolloutStatusChange(rollout_id=rollout_id or 0, wave_index=None if kind == "rollout" else row.index,
                               at=at, event=str(event), from_status=before, to_status=str(move.to), reason=reason)


# ------------------------------------------------------------------------------------------
# reading the trail back


def target_outcomes(s: Session, targets: Sequence[RolloutTarget]) -> dict[str, str]:
    """Each target's outcome from its latest status-history row: healthy, failed:<reason> or
    pending (commanded, installed). The installs and success gates count these."""
    ids = {t.id: t.device_id for t in targets if t.id is not None}
    rollouts = {t.rollout_id for t in targets}
    last: dict[int, tuple[str, str | None]] = {}
    keys = list(ids)
    for i in range(0, len(keys), _CHUNK):
        rows = s.exec(select(TargetStatusChange.target_id, TargetStatusChange.to_status, TargetStatusChange.reason)
                      .where(TargetStatusChange.rollout_id.in_(rollouts),
                             TargetStatusChange.target_id.in_(keys[i:i + _CHUNK]))
                      .order_by(TargetStatusChange.id)).all()
        for tid, status, why in rows:
            last[tid] = (status, why)
    return {dev: _outcome(*last.get(tid, (TargetState.PENDING, None))) for tid, dev in ids.items()}


def _outcome(status: str, reason: str | None) -> str:
    if status == TargetState.HEALTHY:
        return HEALTHY
    if status == TargetState.FAILED:
        return f"failed:{reason or 'unknown'}"
    return PENDING


def history(s: Session, rollout_id: int) -> list[RolloutStatusChange]:
    """The rollout's and its waves' moves, oldest first."""
    return list(s.exec(select(RolloutStatusChange).where(RolloutStatusChange.rollout_id == rollout_id)
                       .order_by(RolloutStatusChange.id)))


__all__ = ["EFFECTS", "IllegalTransition", "can", "history", "kind_of", "target_outcomes", "transition"]
