"""Rollout tables. All rollout state lives here, so a restarted fleet resumes where it was and
several evaluator processes can share the work (see evaluator.py for the locking).

Times are UNIX seconds (float), like fleet.models.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from fleet.models import now
from fleet.rollouts.states import LIVE_ROLLOUTS, RolloutState, TargetState, WaveState

ROLLOUT_STATUSES = tuple(RolloutState)
ACTIVE_STATUSES = LIVE_ROLLOUTS
WAVE_STATUSES = tuple(WaveState)
TARGET_STATUSES = tuple(TargetState)
# A failed target's reason starts with this when its device never confirmed a rollback in time;
# a later signed confirmation heals it (rolled-back).
ROLLBACK_UNCONFIRMED = "rollback-unconfirmed"
# Why a wave waits instead of being judged (wave.last_verdict["waiting"]["kind"]): the fleet is
# blind, so missing evidence proves nothing and no clock runs.
WAIT_INGEST_DISCONNECTED = "ingest-disconnected"   # an ingest process lost the broker
WAIT_INGEST_CATCHING_UP = "ingest-catching-up"     # just reconnected, or its queue is backed up
WAIT_INGEST_AWAY = "ingest-away"                   # an ingest process stopped; its session queues its share
WAIT_NO_INGEST = "no-ingest"                       # ingest processes are known but none is running


def _json(default: Any = None) -> Any:
    return Field(default_factory=(lambda: default() if callable(default) else default),
                 sa_column=Column(JSON, nullable=True))


class Rollout(SQLModel, table=True):
    __tablename__ = "rollout"
    id: int | None = Field(default=None, primary_key=True)
    name: str = ""
    fleet: str = Field(default="default", index=True)
    model_name: str = Field(index=True)
    version: int
    spec: dict[str, Any] = _json(dict)
    status: str = Field(default=RolloutState.RUNNING, index=True)   # states.RolloutState
    current_wave: int = 0
    created_at: float = Field(default_factory=now)
    created_by: str = ""
    updated_at: float = Field(default_factory=now)
    completed_at: float | None = None
    reason: dict[str, Any] | None = _json(None)   # why the last pause / rollback happened
    last_tick_at: float | None = None
    last_holder: str = ""       # the evaluator process that ticked it last
    ticks: int = 0


class RolloutWave(SQLModel, table=True):
    __tablename__ = "rollout_wave"
    __table_args__ = (UniqueConstraint("rollout_id", "index", name="uq_rollout_wave"),)
    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int = Field(index=True)
    index: int
    name: str
    mode: str = "install"          # install | shadow | ab
    phase: str = "install"         # shadow/ab waves switch to install once their gates pass (promotion)
    status: str = WaveState.PENDING   # states.WaveState
    planned: int = 0               # devices assigned
    started_at: float | None = None
    gates_passed_at: float | None = None   # soak starts here
    completed_at: float | None = None
    approved_by: str | None = None
    approved_at: float | None = None
    last_verdict: dict[str, Any] | None = _json(None)


class RolloutTarget(SQLModel, table=True):
    """One device in one rollout (hawkBit's Action), with the version it ran before."""

    __tablename__ = "rollout_target"
    __table_args__ = (UniqueConstraint("rollout_id", "device_id", name="uq_rollout_target"),
                      Index("ix_rollout_target_wave", "rollout_id", "wave_index"))
    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int = Field(index=True)
    wave_index: int
    device_id: str = Field(index=True)
    device_class: str = ""
    model_version_id: int | None = None       # the candidate build for this device class
    from_version: int | None = None           # what the device ran before (rollback target)
    from_manifest_sha256: str | None = None
    status: str = TargetState.PENDING   # states.TargetState
    reason: str | None = None
    command_id: str | None = None
    commanded_at: float | None = None
    installed_at: float | None = None
    updated_at: float = Field(default_factory=now)


class TargetStatusChange(SQLModel, table=True):
    """Append-only status history of a target (the audit trail the installs and success gates are
    computed from; machine.transition writes it)."""

    __tablename__ = "rollout_target_history"
    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int = Field(index=True)
    target_id: int = Field(index=True)
    device_id: str
    at: float = Field(default_factory=now)
    from_status: str
    to_status: str
    reason: str | None = None


class RolloutStatusChange(SQLModel, table=True):
    """Append-only status history of rollouts (wave_index None) and their waves, written by
    machine.transition with the event that caused each move."""

    __tablename__ = "rollout_status_history"
    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int = Field(index=True)
    wave_index: int | None = None
    at: float = Field(default_factory=now)
    event: str
    from_status: str
    to_status: str
    reason: str | None = None


class GateEvaluation(SQLModel, table=True):
    """Gate values over time, one row per evaluation of a wave (throttled when nothing changes)."""

    __tablename__ = "rollout_gate_evaluation"
    __table_args__ = (Index("ix_gate_eval_rollout_at", "rollout_id", "at"),)
    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int
    wave_index: int
    at: float = Field(default_factory=now)
    status: str                      # pass | fail | wait
    results: list[dict[str, Any]] = _json(list)
    devices: dict[str, Any] = _json(dict)   # outcome counts


class RolloutCommand(SQLModel, table=True):
    """Signed command outbox: written in the same transaction as the decision, published after
    commit, so a crash between the two re-publishes instead of losing or duplicating a decision."""

    __tablename__ = "rollout_command"
    __table_args__ = (UniqueConstraint("device_id", "seq", name="uq_rollout_command_seq"),)
    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int | None = Field(default=None, index=True)
    device_id: str = Field(index=True)
    fleet: str = "default"
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    kind: str
    command_id: str = Field(index=True)
    document: dict[str, Any] = _json(dict)
    created_at: float = Field(default_factory=now)
    expires_at: float = 0.0
    sent_at: float | None = Field(default=None, index=True)
    attempts: int = 0


class EvaluatorLease(SQLModel, table=True):
    """Who may act on a rollout right now. Taken with one conditional UPDATE, so two processes
    never both hold it; expiry lets another process take over after a crash."""

    __tablename__ = "rollout_lease"
    name: str = Field(primary_key=True, max_length=128)
    holder: str = ""
    expires_at: float = 0.0
    acquired_at: float = 0.0


class IngestHeartbeat(SQLModel, table=True):
    """One row per ingest identity (edgefleet-ingest-<name>), refreshed every second: whether it
    is connected to the broker and how far behind it is. The evaluator reads it to know when it
    is blind (fleet.ingest.health)."""

    __tablename__ = "ingest_heartbeat"
    name: str = Field(primary_key=True, max_length=200)
    owner: str = ""                 # host:pid of the process using the name now
    connected: bool = False
    connected_since: float | None = None
    queue_depth: int = 0
    session_expiry_s: int = 0       # >0: while it is away the broker queues its share of telemetry
    stopped: bool = False           # graceful stop (a crash leaves it False and the row goes stale)
    updated_at: float = Field(default_factory=now)


class FleetKey(SQLModel, table=True):
    """Fleet command-signing keys (public halves; private keys stay in files). Rotation: a `next`
    key is announced to devices by a rotate-key command signed with the `active` key."""

    __tablename__ = "rollout_fleet_key"
    key_id: str = Field(primary_key=True, max_length=32)
    public_key: str
    private_key_path: str
    status: str = "active"          # active | next | retired
    created_at: float = Field(default_factory=now)
    activated_at: float | None = None
    retired_at: float | None = None
