"""The fleet database (see docs/CONTRACTS.md "Fleet database"). The rollout engineer reads these.

Times are UNIX seconds (float) so SQLite and PostgreSQL agree and JSON stays trivial.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel


def now() -> float:
    return time.time()


def _json(default: Any = None) -> Any:
    return Field(default_factory=(lambda: default() if callable(default) else default),
                 sa_column=Column(JSON, nullable=True))


class Device(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=128)
    fleet: str = Field(default="default", index=True)
    device_class: str = Field(default="", index=True)
    tags: list[str] = _json(list)
    attributes: dict[str, Any] = _json(dict)
    public_key: str = ""
    key_id: str = ""
    status: str = Field(default="active", index=True)  # active | decommissioned
    enrolled_at: float = Field(default_factory=now)
    decommissioned_at: float | None = None
    last_seen: float | None = Field(default=None, index=True)
    online: bool | None = None
    installed_name: str | None = None
    installed_version: int | None = None
    installed_manifest_sha256: str | None = None
    installed_bundle_sha256: str | None = None
    previous_version: int | None = None
    agent_version: str | None = None
    state: dict[str, Any] | None = _json(None)
    state_seq: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    last_seq: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    command_seq: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    mqtt_username: str = ""
    mqtt_password_hash: str = ""
    quarantined_at: float | None = None    # ingest refuses its telemetry until an operator releases it
    quarantine_reason: str | None = None


class ModelVersion(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("name", "version", "device_class", name="uq_modelversion_nvc"),)
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)
    version: int
    device_class: str
    format: str
    precision: str
    manifest_sha256: str = Field(index=True)
    bundle_sha256: str = Field(index=True)
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    artifact_path: str
    manifest: dict[str, Any] = _json(dict)
    signed_by: str = ""
    uploaded_by: str = ""
    created_at: float = Field(default_factory=now)


class TelemetryWindow(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("device_id", "seq", name="uq_telemetry_device_seq"),
        Index("ix_telemetry_model_window", "model_name", "model_version", "window_start"),
    )
    id: int | None = Field(default=None, sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"),
                                                          primary_key=True, autoincrement=True))
    device_id: str = Field(index=True)
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    window_start: float
    window_end: float
    model_name: str
    model_version: int
    role: str = "active"
    device_class: str = ""
    cohort: str = ""
    requests: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    errors: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    payload: dict[str, Any] = _json(dict)
    received_at: float = Field(default_factory=now, index=True)


class Aggregate(SQLModel, table=True):
    """Telemetry merged over devices per (model version, role, device class, cohort, window, wave).

    `wave` is "<rollout id>:<wave index>" for devices that are targets of an open rollout of the
    model (fleet.ingest.rollout_view), "" otherwise: rollout evidence sums a wave's rows instead of
    reading raw windows; every other reader merges the rows of a key whatever their wave."""

    __table_args__ = (UniqueConstraint("model_name", "model_version", "role", "device_class", "cohort",
                                       "window_start", "wave", name="uq_aggregate_key"),
                      Index("ix_aggregate_wave", "model_name", "wave", "window_start"))
    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(index=True)
    model_version: int
    role: str = "active"
    device_class: str = ""
    cohort: str = ""
    window_start: float = Field(index=True)
    window_seconds: float = 60.0
    n_windows: int = 0
    requests: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    errors: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    payload: dict[str, Any] = _json(dict)
    updated_at: float = Field(default_factory=now)
    wave: str = Field(default="", max_length=64)


class DeviceVersionWindows(SQLModel, table=True):
    """How many telemetry windows a device sent per model, role and version, from when to when
    (ingest keeps it, fleet.ingest.rollout_view). The rollout reporting gate and the model-health
    device counts read this instead of counting raw windows (which retention drops)."""

    __tablename__ = "device_version_windows"
    __table_args__ = (Index("ix_device_version_windows_model", "model_name", "model_version", "last_end"),)
    device_id: str = Field(primary_key=True, max_length=128)
    model_name: str = Field(primary_key=True, max_length=128)
    role: str = Field(primary_key=True, max_length=16)
    model_version: int = Field(primary_key=True)
    device_class: str = ""
    first_start: float
    last_end: float
    windows: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))


class DeviceEvent(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("device_id", "seq", name="uq_event_device_seq"),)
    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(index=True)
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    time: float
    kind: str = Field(index=True)
    command_id: str | None = Field(default=None, index=True)
    reason: str | None = None
    details: dict[str, Any] = _json(dict)
    received_at: float = Field(default_factory=now)


class AuditEntry(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    at: float = Field(default_factory=now, index=True)
    actor: str
    action: str = Field(index=True)
    target: str = Field(default="", index=True)
    before: Any = _json(None)
    after: Any = _json(None)


class ApiToken(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str
    role: str  # viewer | operator | admin
    token_hash: str = Field(unique=True, index=True)
    created_at: float = Field(default_factory=now)
    created_by: str = ""
    revoked_at: float | None = None
    last_used: float | None = None


class EnrolmentToken(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(unique=True, index=True)
    created_at: float = Field(default_factory=now)
    created_by: str = ""
    expires_at: float
    used_at: float | None = None
    device_id: str | None = None
    device_class: str | None = None
    tags: list[str] = _json(list)
    attributes: dict[str, Any] = _json(dict)


class DriftAlert(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("model_name", "model_version", "cohort", "window_start", "reference",
                                       name="uq_drift_alert_key"),)
    id: int | None = Field(default=None, primary_key=True)
    created_at: float = Field(default_factory=now, index=True)
    model_name: str = Field(index=True)
    model_version: int
    device_class: str = ""
    cohort: str = ""
    window_start: float
    window_end: float
    reference: str  # "baseline" | "control:v<N>"
    level: str  # warn | alert
    summary: str = ""
    evidence: dict[str, Any] = _json(dict)
    status: str = Field(default="open", index=True)  # open | acknowledged | resolved (rollout left pause)
    acknowledged_at: float | None = None
    acknowledged_by: str | None = None


class RetrainingRequest(SQLModel, table=True):
    """Persistent drift on a model version asks for a retrain; an operator approves or dismisses it."""

    __tablename__ = "retraining_request"
    id: int | None = Field(default=None, primary_key=True)
    created_at: float = Field(default_factory=now, index=True)
    model_name: str = Field(index=True)
    model_version: int
    status: str = Field(default="open", index=True)  # open | dismissed | triggered | trigger-failed
    summary: str = ""
    evidence: dict[str, Any] = _json(dict)
    decided_by: str | None = None
    decided_at: float | None = None
    note: str = ""
    trigger_result: dict[str, Any] = _json(dict)


class ModelOwner(SQLModel, table=True):
    """Who answers for a model (issue 16): team, contact, on-call reference and review cadence."""

    __tablename__ = "model_owner"
    name: str = Field(primary_key=True, max_length=128)
    team: str = ""
    contact: str = ""
    oncall: str = ""
    review_interval_days: int = 90
    created_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)
    updated_by: str = ""


class ModelVersionStatus(SQLModel, table=True):
    """Lifecycle status of a model version (all its device-class builds): active (no row),
    deprecated or retired, with who changed it, when and why."""

    __tablename__ = "model_version_status"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_version_status_nv"),)
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)
    version: int
    status: str = "active"  # active | deprecated | retired
    reason: str = ""
    changed_by: str = ""
    changed_at: float = Field(default_factory=now)


class ModelReview(SQLModel, table=True):
    """A scheduled review of a model: who, when, the decision (keep, retrain, retire) and notes."""

    __tablename__ = "model_review"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)
    version: int | None = None
    reviewer: str = ""
    at: float = Field(default_factory=now, index=True)
    decision: str = "keep"
    notes: str = ""


class PredictionRecord(SQLModel, table=True):
    """A sampled prediction a device reported (telemetry `prediction_records`; no inputs), kept so
    that labels posted later by request id (OutcomeLabel) can be joined (fleet.analytics.join)."""

    __table_args__ = (Index("ix_predictionrecord_model", "model_name", "model_version"),)
    request_id: str = Field(primary_key=True, max_length=80)
    window_id: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    device_id: str
    model_name: str
    model_version: int
    device_class: str = ""
    cohort: str = ""
    predicted: float
    confidence: float | None = None   # top-1 probability (classification); None for regression
    slice: str = "_all"
    at: float


class OutcomeLabel(SQLModel, table=True):
    """A label from a downstream system (POST /api/outcomes); joined with PredictionRecord by id."""

    request_id: str = Field(primary_key=True, max_length=80)
    label: float
    received_at: float = Field(default_factory=now, index=True)
