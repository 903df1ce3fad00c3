"""The rollout state machine, exhaustively: every (state, event) of the rollout, wave and target
tables, on the real fleet database. A legal move changes the status, applies its effects and
appends one history row; an illegal one raises and leaves no trace, even after a commit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from fleet.db import init_db, make_engine
from fleet.rollouts.machine import EFFECTS, can, target_outcomes, transition
from fleet.rollouts.models import Rollout, RolloutStatusChange, RolloutTarget, RolloutWave, TargetStatusChange
from fleet.rollouts.states import (
    MACHINES,
    Effect,
    IllegalTransition,
    RolloutState,
    TargetEvent,
    TargetState,
    WaveState,
    next_move,
)

AT = 1_000_000.0
ARGS: dict[str, Any] = {"command_id": "cmd-1", "phase": "install", "why": {"kind": "test", "summary": "s"}}
CASES = [(kind, str(state), str(event)) for kind, (states, events, _) in MACHINES.items()
         for state in states for event in events]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{Path(tmp_path_factory.mktemp('states')) / 'fleet.db'}")
    init_db(eng)
    yield eng
    eng.dispose()


def _make(s: Session, kind: str, state: str) -> tuple[type, int]:
    """A row of `kind` in `state`, as stored (the fixture, not a move); returns its class and id."""
    r = Rollout(model_name="digits", version=2, status=state if kind == "rollout" else "running")
    s.add(r)
    s.flush()
    if kind == "rollout":
        return Rollout, r.id
    w = RolloutWave(rollout_id=r.id, index=0, name="w0", mode="shadow", phase="shadow",
                    status=state if kind == "wave" else "active")
    s.add(w)
    s.flush()
    if kind == "wave":
        return RolloutWave, w.id
    t = RolloutTarget(rollout_id=r.id, wave_index=0, device_id=f"dev-{r.id}", status=state)
    s.add(t)
    s.flush()
    return RolloutTarget, t.id


def _history(s: Session, kind: str, row: Any) -> list[Any]:
    if kind == "target":
        return list(s.exec(select(TargetStatusChange).where(TargetStatusChange.target_id == row.id)))
    rid = row.id if kind == "rollout" else row.rollout_id
    return list(s.exec(select(RolloutStatusChange).where(RolloutStatusChange.rollout_id == rid)))


def _fields(row: Any) -> dict[str, Any]:
    return {k: v for k, v in row.model_dump().items() if k != "status"}


# what each effect leaves on the row (checked after the commit, read back from the database)
EFFECT_CHECKS = {
    Effect.STAMP_COMMAND: lambda row: row.command_id == "cmd-1" and row.commanded_at == AT,
    Effect.CLEAR_INSTALLED: lambda row: row.installed_at is None,
    Effect.START_CLOCK: lambda row: row.phase == "install" and row.started_at == AT and row.gates_passed_at is None,
    Effect.START_SOAK: lambda row: row.gates_passed_at == AT,
    Effect.STOP_SOAK: lambda row: row.gates_passed_at is None,
    Effect.RESET_WAVE: lambda row: row.phase == row.mode and row.started_at is None and row.completed_at is None,
    Effect.STAMP_COMPLETED: lambda row: row.completed_at == AT,
    Effect.SET_REASON: lambda row: row.reason == ARGS["why"],
    Effect.CLEAR_REASON: lambda row: row.reason is None,
}


@pytest.mark.parametrize("kind, state, event", CASES, ids=[f"{k}:{s}:{e}" for k, s, e in CASES])
def test_every_state_and_event(db: Engine, kind: str, state: str, event: str) -> None:
    with Session(db) as s:
        cls, row_id = _make(s, kind, state)
        s.commit()
    table = MACHINES[kind][2]
    with Session(db) as s:
        row = s.get(cls, row_id)
        before = _fields(row)
        assert can(row, event) == ((state, event) in table)
        if (state, event) not in table:
            with pytest.raises(IllegalTransition, match=f"{kind} cannot {event} from '{state}'"):
                transition(s, row, event, at=AT, reason="why", **ARGS)
            s.commit()   # nothing was staged: committing writes nothing
        else:
            assert transition(s, row, event, at=AT, reason="why", **ARGS) is True
            s.commit()
    with Session(db) as s:
        row = s.get(cls, row_id)
        hist = _history(s, kind, row)
        if (state, event) not in table:
            assert row.status == state and _fields(row) == before and hist == []
            return
        move = table[(state, event)]
        assert row.status == move.to
        assert [(h.from_status, h.to_status, h.at, h.reason) for h in hist] == [(state, move.to, AT, "why")]
        if kind != "target":
            assert hist[0].event == event and hist[0].wave_index == (None if kind == "rollout" else 0)
        for effect in move.effects:
            assert EFFECT_CHECKS[effect](row), (effect, row)


def test_the_tables_speak_only_their_own_states_events_and_effects() -> None:
    assert set(EFFECTS) == set(Effect) == set(EFFECT_CHECKS)
    initial = {"rollout": RolloutState.RUNNING, "wave": WaveState.PENDING, "target": TargetState.PENDING}
    final = {"rollout": set(), "wave": {WaveState.PASSED, WaveState.SKIPPED}, "target": {TargetState.SKIPPED}}
    for kind, (states, events, table) in MACHINES.items():
        for (state, event), move in table.items():
            assert state in set(states) and event in set(events) and move.to in set(states), (kind, state, event)
            assert next_move(kind, state, event) is move
        left = {state for state, _ in table}
        reached = {m.to for m in table.values()}
        assert set(states) - left == final[kind], kind
        # wave "skipped" is kept for stored rows; no move leads to it
        assert set(states) - reached - {initial[kind]} == ({WaveState.SKIPPED} if kind == "wave" else set()), kind


def test_a_move_missing_its_effect_argument_is_refused_and_leaves_no_trace(db: Engine) -> None:
    with Session(db) as s:
        cls, tid = _make(s, "target", TargetState.PENDING)
        s.commit()
    with Session(db) as s:
        t = s.get(cls, tid)
        with pytest.raises(IllegalTransition, match="missing command_id"):
            transition(s, t, TargetEvent.COMMAND, at=AT, reason="install v2")
        s.commit()
    with Session(db) as s:
        t = s.get(cls, tid)
        assert t.status == TargetState.PENDING and t.command_id is None and _history(s, "target", t) == []


def test_the_same_target_outcome_every_tick_writes_one_history_row(db: Engine) -> None:
    with Session(db) as s:
        cls, tid = _make(s, "target", TargetState.COMMANDED)
        s.commit()
    with Session(db) as s:
        t = s.get(cls, tid)
        assert transition(s, t, TargetEvent.HEALTHY, at=AT)
        assert not transition(s, t, TargetEvent.HEALTHY, at=AT + 1)        # no-op: same status, no reason
        assert transition(s, t, TargetEvent.FAIL, at=AT + 2, reason="local-rollback")
        assert not transition(s, t, TargetEvent.FAIL, at=AT + 3, reason="local-rollback")
        assert transition(s, t, TargetEvent.FAIL, at=AT + 4, reason="rollback-impossible:no-previous-version")
        s.commit()
        hist = _history(s, "target", t)
    assert [(h.to_status, h.reason) for h in hist] == [
        ("healthy", None), ("failed", "local-rollback"), ("failed", "rollback-impossible:no-previous-version")]


def test_install_and_success_outcomes_are_read_back_from_the_history(db: Engine) -> None:
    """What the gates count is the trail: a target's latest history row, whatever the row says."""
    with Session(db) as s:
        ids = [_make(s, "target", TargetState.COMMANDED)[1] for _ in range(4)]
        s.commit()
    with Session(db) as s:
        ts = [s.get(RolloutTarget, i) for i in ids]
        transition(s, ts[0], TargetEvent.HEALTHY, at=AT)
        transition(s, ts[1], TargetEvent.INSTALLED, at=AT)
        transition(s, ts[2], TargetEvent.FAIL, at=AT, reason="timeout")
        s.commit()
        out = target_outcomes(s, ts)
        # a status written behind the machine's back is not counted: the history is the truth
        ts[3].status = TargetState.HEALTHY
        s.add(ts[3])
        assert target_outcomes(s, ts)[ts[3].device_id] == "pending"
        n = s.exec(select(func.count()).select_from(TargetStatusChange)
                   .where(TargetStatusChange.target_id.in_(ids))).one()
    assert [out[t.device_id] for t in ts] == ["healthy", "pending", "failed:timeout", "pending"]
    assert n == 3
