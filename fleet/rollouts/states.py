"""The rollout state machine as data (hawkBit's Rollout / RolloutGroup / Action statuses).

Three machines (rollout, wave, target), each a table `(state, event) -> Move(state, effects)`.
Nothing here touches the database: `fleet.rollouts.machine.transition` is the one function that
applies a move, writes the status history and refuses any move the table does not hold. Every
status the code sets is one of these enums; the values are the strings stored in the tables
(StrEnum), so stored rows, the API and the console read the same words as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class RolloutState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    AWAITING_APPROVAL = "awaiting-approval"
    COMPLETED = "completed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled-back"


class WaveState(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    SOAKING = "soaking"
    AWAITING_APPROVAL = "awaiting-approval"
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


class TargetState(StrEnum):
    PENDING = "pending"
    COMMANDED = "commanded"
    INSTALLED = "installed"
    HEALTHY = "healthy"
    FAILED = "failed"
    ROLLING_BACK = "rolling-back"
    ROLLED_BACK = "rolled-back"
    SKIPPED = "skipped"
    PROMOTED = "promoted"


class RolloutEvent(StrEnum):
    BREACH = "breach"                   # a wave's gate failed: pause (the wave is rolled back)
    PAUSE = "pause"                     # an operator, or a fleet-wide rollback of the version
    AWAIT_APPROVAL = "await-approval"   # a wave passed its gates and needs a human
    APPROVE = "approve"                 # the approved wave finishes on the next tick
    RESUME = "resume"
    COMPLETE = "complete"               # the last wave passed
    ABORT = "abort"
    ROLL_BACK = "roll-back"             # every touched device goes back (again, if asked twice)


class WaveEvent(StrEnum):
    START = "start"                     # the candidate (install, shadow or A/B) is commanded
    SOAK = "soak"                       # every gate passes: the soak timer starts
    UNSOAK = "unsoak"                   # a gate stopped passing during the soak
    PROMOTE = "promote"                 # a shadow/A-B phase passed: install on the same devices
    AWAIT_APPROVAL = "await-approval"
    PASS = "pass"
    BREACH = "breach"
    RETRY = "retry"                     # an operator resumed a rollout whose wave failed


class TargetEvent(StrEnum):
    COMMAND = "command"                 # candidate command queued
    INSTALLED = "installed"             # signed state shows the candidate
    HEALTHY = "healthy"                 # ... and it reports telemetry for it
    FAIL = "fail"                       # a signed failure, a timeout, or no rollback possible
    PROMOTE = "promote"
    SKIP = "skip"                       # device gone, or no build for its class
    ROLL_BACK = "roll-back"             # rollback / stop-candidate command queued
    ROLLED_BACK = "rolled-back"         # signed state shows the old version (or it never left it)
    RESET = "reset"                     # operator resumed the wave: start over


class Effect(StrEnum):
    """Field changes a move makes besides the status (machine.EFFECTS implements them)."""

    STAMP_COMMAND = "stamp-command"       # target: command_id, commanded_at
    CLEAR_INSTALLED = "clear-installed"   # target: installed_at = None (a new command)
    START_CLOCK = "start-clock"           # wave: phase, started_at; soak cleared
    START_SOAK = "start-soak"             # wave: gates_passed_at = at
    STOP_SOAK = "stop-soak"               # wave: gates_passed_at = None
    RESET_WAVE = "reset-wave"             # wave: phase back to its mode, clocks cleared
    STAMP_COMPLETED = "stamp-completed"   # wave/rollout: completed_at = at
    SET_REASON = "set-reason"             # rollout: reason = why (a dict)
    CLEAR_REASON = "clear-reason"         # rollout: reason = None


@dataclass(frozen=True)
class Move:
    to: str
    effects: tuple[Effect, ...] = ()


class IllegalTransition(ValueError):
    """The table holds no move for this (state, event); nothing was changed or written."""


R, W, T, E = RolloutState, WaveState, TargetState, Effect

ROLLOUT_MOVES: Mapping[tuple[str, str], Move] = {
    (R.RUNNING, RolloutEvent.BREACH): Move(R.PAUSED, (E.SET_REASON,)),
    (R.RUNNING, RolloutEvent.PAUSE): Move(R.PAUSED, (E.SET_REASON,)),
    (R.RUNNING, RolloutEvent.AWAIT_APPROVAL): Move(R.AWAITING_APPROVAL),
    (R.RUNNING, RolloutEvent.COMPLETE): Move(R.COMPLETED, (E.STAMP_COMPLETED,)),
    (R.RUNNING, RolloutEvent.ABORT): Move(R.ABORTED, (E.STAMP_COMPLETED,)),
    (R.RUNNING, RolloutEvent.ROLL_BACK): Move(R.ROLLED_BACK, (E.SET_REASON,)),
    (R.AWAITING_APPROVAL, RolloutEvent.PAUSE): Move(R.PAUSED, (E.SET_REASON,)),
    (R.AWAITING_APPROVAL, RolloutEvent.APPROVE): Move(R.RUNNING),
    (R.AWAITING_APPROVAL, RolloutEvent.ABORT): Move(R.ABORTED, (E.STAMP_COMPLETED,)),
    (R.AWAITING_APPROVAL, RolloutEvent.ROLL_BACK): Move(R.ROLLED_BACK, (E.SET_REASON,)),
    (R.PAUSED, RolloutEvent.RESUME): Move(R.RUNNING, (E.CLEAR_REASON,)),
    (R.PAUSED, RolloutEvent.ABORT): Move(R.ABORTED, (E.STAMP_COMPLETED,)),
    (R.PAUSED, RolloutEvent.ROLL_BACK): Move(R.ROLLED_BACK, (E.SET_REASON,)),
    (R.COMPLETED, RolloutEvent.ROLL_BACK): Move(R.ROLLED_BACK, (E.SET_REASON,)),
    (R.ABORTED, RolloutEvent.ROLL_BACK): Move(R.ROLLED_BACK, (E.SET_REASON,)),
    (R.ROLLED_BACK, RolloutEvent.ROLL_BACK): Move(R.ROLLED_BACK, (E.SET_REASON,)),
}

WAVE_MOVES: Mapping[tuple[str, str], Move] = {
    (W.PENDING, WaveEvent.START): Move(W.ACTIVE, (E.START_CLOCK,)),
    (W.ACTIVE, WaveEvent.SOAK): Move(W.SOAKING, (E.START_SOAK,)),
    (W.ACTIVE, WaveEvent.PASS): Move(W.PASSED, (E.STAMP_COMPLETED,)),        # a wave left with no devices
    (W.ACTIVE, WaveEvent.BREACH): Move(W.FAILED, (E.STAMP_COMPLETED,)),
    (W.SOAKING, WaveEvent.UNSOAK): Move(W.ACTIVE, (E.STOP_SOAK,)),
    (W.SOAKING, WaveEvent.PROMOTE): Move(W.ACTIVE, (E.START_CLOCK,)),
    (W.SOAKING, WaveEvent.AWAIT_APPROVAL): Move(W.AWAITING_APPROVAL),
    (W.SOAKING, WaveEvent.PASS): Move(W.PASSED, (E.STAMP_COMPLETED,)),
    (W.SOAKING, WaveEvent.BREACH): Move(W.FAILED, (E.STAMP_COMPLETED,)),
    (W.AWAITING_APPROVAL, WaveEvent.PASS): Move(W.PASSED, (E.STAMP_COMPLETED,)),
    (W.FAILED, WaveEvent.RETRY): Move(W.PENDING, (E.RESET_WAVE,)),
}

_LIVE = (T.COMMANDED, T.INSTALLED, T.HEALTHY, T.FAILED, T.PROMOTED)
TARGET_MOVES: Mapping[tuple[str, str], Move] = {
    (T.PENDING, TargetEvent.COMMAND): Move(T.COMMANDED, (E.STAMP_COMMAND, E.CLEAR_INSTALLED)),
    (T.PROMOTED, TargetEvent.COMMAND): Move(T.COMMANDED, (E.STAMP_COMMAND, E.CLEAR_INSTALLED)),
    (T.PENDING, TargetEvent.SKIP): Move(T.SKIPPED),
    (T.PROMOTED, TargetEvent.SKIP): Move(T.SKIPPED),
    (T.COMMANDED, TargetEvent.INSTALLED): Move(T.INSTALLED),
    (T.INSTALLED, TargetEvent.INSTALLED): Move(T.INSTALLED),
    (T.COMMANDED, TargetEvent.HEALTHY): Move(T.HEALTHY),
    (T.INSTALLED, TargetEvent.HEALTHY): Move(T.HEALTHY),
    (T.HEALTHY, TargetEvent.HEALTHY): Move(T.HEALTHY),
    **{(s, TargetEvent.FAIL): Move(T.FAILED) for s in _LIVE},
    **{(s, TargetEvent.PROMOTE): Move(T.PROMOTED) for s in _LIVE if s != T.PROMOTED},
    **{(s, TargetEvent.ROLL_BACK): Move(T.ROLLING_BACK, (E.STAMP_COMMAND,)) for s in _LIVE},
    (T.ROLLING_BACK, TargetEvent.FAIL): Move(T.FAILED),                      # rollback unconfirmed in time
    (T.ROLLING_BACK, TargetEvent.ROLLED_BACK): Move(T.ROLLED_BACK),
    (T.FAILED, TargetEvent.ROLLED_BACK): Move(T.ROLLED_BACK),                # never left it / confirmed late
    **{(s, TargetEvent.RESET): Move(T.PENDING) for s in T if s != T.SKIPPED},
}

# Targets a wave is judged on, and the ones a rollback sends back.
JUDGED_TARGETS = (T.COMMANDED, T.INSTALLED, T.HEALTHY, T.FAILED)
ROLLBACK_TARGETS = _LIVE
LIVE_ROLLOUTS = (R.RUNNING, R.AWAITING_APPROVAL)
OPEN_ROLLOUTS = (R.RUNNING, R.PAUSED, R.AWAITING_APPROVAL)   # one per model and fleet at a time
FINISHED_ROLLOUTS = (R.COMPLETED, R.ABORTED, R.ROLLED_BACK)

MACHINES: Mapping[str, tuple[type[StrEnum], type[StrEnum], Mapping[tuple[str, str], Move]]] = {
    "rollout": (RolloutState, RolloutEvent, ROLLOUT_MOVES),
    "wave": (WaveState, WaveEvent, WAVE_MOVES),
    "target": (TargetState, TargetEvent, TARGET_MOVES),
}


def next_move(kind: str, state: str, event: str) -> Move:
    """The move the table holds for (state, event), or IllegalTransition naming what is legal."""
    states, events, table = MACHINES[kind]
    move = table.get((state, event))
    if move is None:
        legal = sorted(str(e) for (s, e) in table if s == state)
        raise IllegalTransition(f"{kind} cannot {event} from {state!r} "
                                f"(legal: {', '.join(legal) or 'none, it is final'})")
    return move


def allowed(kind: str, state: str, event: str) -> bool:
    return (state, event) in MACHINES[kind][2]
