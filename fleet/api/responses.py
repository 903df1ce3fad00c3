"""Response models of the fleet API, published in the OpenAPI document (and checked against live
responses by the schemathesis test). They describe what the views' *_view() helpers return;
objects stay open (extra keys allowed) so adding a field is not a breaking change."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")
Obj = dict[str, Any]


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Page(Open, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int
    next_offset: int | None


class Items(Open, Generic[T]):
    items: list[T]


class Installed(Open):
    name: str
    version: int | None
    manifest_sha256: str | None
    bundle_sha256: str | None


class DeviceView(Open):
    id: str
    fleet: str
    device_class: str
    tags: list[str]
    attributes: Obj
    status: str
    key_id: str
    public_key: str
    enrolled_at: float
    decommissioned_at: float | None
    last_seen: float | None
    online: bool | None
    installed: Installed | None
    previous_version: int | None
    agent_version: str | None
    state_seq: int
    command_seq: int
    quarantine: Obj | None = None


class DeviceDetail(DeviceView):
    state: Obj | None


class DeviceEventView(Open):
    seq: int
    time: float
    kind: str
    command_id: str | None
    reason: str | None
    details: Obj | None


class TelemetryView(Open):
    seq: int
    window_start: float
    window_end: float
    model: str
    version: int
    role: str
    requests: int
    errors: int
    cohort: str
    payload: Obj | None


class EnrolmentTokenCreated(Open):
    token: str
    id: int
    expires_at: float


class MqttInfo(Open):
    host: str
    port: int
    url: str
    username: str
    password: str
    client_id: str


class Enrolled(Open):
    device_id: str
    fleet: str
    device: DeviceView
    mqtt: MqttInfo
    topics: dict[str, str]
    fleet_keys: list[str]
    build_keys: list[str]
    artifacts_url: str


class MqttVerdict(Open):
    result: str
    Ok: bool


class TokenView(Open):
    id: int
    name: str
    role: str
    created_at: float
    created_by: str
    revoked_at: float | None


class TokenCreated(TokenView):
    token: str


class AuditView(Open):
    id: int
    at: float
    actor: str
    action: str
    target: str
    before: Any = None
    after: Any = None


class RetrainingView(Open):
    id: int
    created_at: float
    model: str
    version: int
    status: str
    summary: str | None
    evidence: Any = None
    decided_by: str | None
    decided_at: float | None
    note: str | None
    trigger_result: Any = None


class RetrainingList(Open):
    requests: list[RetrainingView]


class VersionView(Open):
    id: int
    name: str
    version: int
    device_class: str
    format: str
    precision: str
    manifest_sha256: str
    bundle_sha256: str
    size: int
    signed_by: str | None
    created_at: float
    uploaded_by: str | None
    url: str
    metrics: Obj
    lineage: Obj
    has_drift_baseline: bool
    manifest: Obj | None = None


class ModelSummary(Open):
    name: str
    versions: list[int]
    latest: int
    device_classes: list[str]


class ModelList(Open):
    items: list[ModelSummary]
    total: int


class Performance(Open):
    model: str
    version: int
    windows: list[Obj]
    cohorts: dict[str, Obj]
    total: Obj


class AlertView(Open):
    id: int
    created_at: float
    model: str
    version: int
    device_class: str | None
    cohort: str | None
    window_start: float | None
    window_end: float | None
    reference: str
    level: str
    summary: str | None
    status: str
    acknowledged_at: float | None
    acknowledged_by: str | None
    evidence: Any = None


class NewAlerts(Open):
    new_alerts: list[AlertView]


class Overview(Open):
    devices: Obj
    installed: list[Obj]
    models: int
    versions: int
    open_alerts: int


class AggregateView(Open):
    model: str
    version: int
    role: str
    device_class: str
    cohort: str
    window_start: float
    window_seconds: float
    n_windows: int
    requests: int
    errors: int
    metrics: Obj
    payload: Obj | None


class IngestStats(Open):
    running: bool


class RolloutSummary(Open):
    id: int
    name: str
    fleet: str
    model_name: str
    version: int
    status: str
    current_wave: int | None
    created_at: float
    created_by: str
    updated_at: float
    completed_at: float | None
    reason: Obj | None
    targets: dict[str, int]


class RolloutDetail(RolloutSummary):
    spec: Obj
    waves: list[Obj]
    gate_history: list[Obj]


class RolloutList(Open):
    rollouts: list[RolloutSummary]


class TargetView(Open):
    device_id: str
    wave: int
    device_class: str
    status: str
    reason: str | None
    from_version: int | None
    command_id: str | None
    commanded_at: float | None
    installed_at: float | None
    updated_at: float | None


class TargetList(Open):
    targets: list[TargetView]


class TargetHistory(Open):
    history: list[Obj]


class GateEvaluations(Open):
    evaluations: list[Obj]


class OpenApiDoc(Open):
    openapi: str
    paths: Obj


class JsonObject(Open):
    """A JSON object whose fields the operation's description lists."""


class OutcomesAccepted(Open):
    accepted: int
    matched: int


class QualityReport(Open):
    model: str
    version: int
    quality: Obj
    build: Obj
    concept_drift: Obj
    slice_gap: Obj
