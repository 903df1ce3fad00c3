"""Request models: every JSON body and query string of the fleet API. fleet.api.validation checks
requests against them; fleet.api.openapi publishes them. Bounds are what the database and the
domain accept: int64 integers, finite floats, bounded strings and lists."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model

from agent.names import NAME_PATTERN, validate_name
from fleet.registry.auth import ROLES

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MAX = 2**31 - 1
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
# Versions and ids are INTEGER columns: 32-bit on PostgreSQL.
Version = Annotated[int, Field(ge=0, le=INT32_MAX)]
Count = Annotated[int, Field(ge=0, le=INT64_MAX)]
Float = Annotated[float, Field(allow_inf_nan=False)]
Timestamp = Annotated[float, Field(allow_inf_nan=False, ge=0, le=1e12, description="Unix time, seconds")]
Name = Annotated[str, Field(min_length=1, max_length=128)]
# The one name grammar (agent.names) for what becomes a path, topic or key on a device.
DeviceId = Annotated[str, Field(pattern=NAME_PATTERN, max_length=63),
                     AfterValidator(lambda v: validate_name("device id", v))]
DeviceClass = Annotated[str, Field(pattern=NAME_PATTERN, max_length=63),
                        AfterValidator(lambda v: validate_name("device class", v))]
Text = Annotated[str, Field(max_length=256)]
Key = Annotated[str, Field(min_length=1, max_length=64)]
Scalar = Annotated[str, Field(max_length=256)] | Int64 | Float | bool
Tags = Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=64)]
Attributes = Annotated[dict[Key, Scalar], Field(max_length=64, description="scalar values, e.g. {\"region\": \"eu\"}")]


class Strict(BaseModel):
    """Unknown fields are refused: a typo is an error, not a silently ignored option."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Query(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class PageQuery(Query):
    limit: Annotated[int, Field(ge=1, le=500)] = 50
    offset: Annotated[int, Field(ge=0, le=INT64_MAX)] = 0


# --- devices and enrolment -------------------------------------------------------------------

class DeviceListQuery(PageQuery):
    """Filters; attribute filters are `attr.<key>=<value>` (e.g. `attr.region=eu`)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    status: Literal["active", "decommissioned"] | None = None
    device_class: Text | None = None
    model: Text | None = None
    version: Version | None = None
    q: Text | None = Field(None, description="device id contains")
    tag: Text | None = None


class TelemetryQuery(PageQuery):
    model: Text | None = None
    payload: bool = Field(False, description="include the raw window payload")


class DevicePatch(Strict):
    tags: Tags | None = None
    attributes: Attributes | None = None


class EnrolmentTokenCreate(Strict):
    ttl_s: Annotated[float, Field(gt=0, le=366 * 86400, allow_inf_nan=False)] = 24 * 3600
    device_class: DeviceClass | None = None
    tags: Tags | None = None
    attributes: Attributes | None = None


class EnrolRequest(Strict):
    token: Annotated[str, Field(min_length=1, max_length=256)]
    public_key: Annotated[str, Field(min_length=1, max_length=256, description="base64 raw Ed25519")]
    device_id: DeviceId | None = None
    device_class: DeviceClass | None = None
    tags: Tags | None = None
    attributes: Attributes | None = None


class MqttAuthRequest(BaseModel):
    """Fields mosquitto-go-auth / EMQX send (form or JSON); others are ignored."""

    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)
    username: Annotated[str, Field(max_length=256)] = ""
    password: Annotated[str, Field(max_length=1024)] = ""
    topic: Annotated[str, Field(max_length=1024)] = ""
    clientid: Annotated[str, Field(max_length=256)] = ""
    acc: Annotated[int, Field(ge=0, le=255)] = 0
    action: Literal["publish", "subscribe", ""] = ""


# --- tokens, audit, retraining -----------------------------------------------------------------

class TokenCreate(Strict):
    name: Name
    role: Literal[ROLES]  # type: ignore[valid-type]


class AuditQuery(PageQuery):
    actor: Text | None = None
    action: Text | None = None
    target: Text | None = None


class StatusQuery(Query):
    status: Text | None = None


class DecisionBody(Strict):
    note: Annotated[str, Field(max_length=2000)] = ""


# --- models, telemetry, drift, alerts --------------------------------------------------------

class VersionQuery(Query):
    device_class: Text | None = None


class PerformanceQuery(Query):
    role: Text | None = None
    cohort: Text | None = None


class AggregatesQuery(PageQuery):
    model: Text | None = None
    cohort: Text | None = None
    role: Text | None = None
    device_class: Text | None = None
    version: Version | None = None
    since: Timestamp | None = None
    payload: bool = False


class DriftQuery(Query):
    reference: Literal["baseline", "control"] = "baseline"
    role: Text = "active"
    cohort: Text | None = None
    device_class: Text | None = None
    since: Timestamp | None = None
    until: Timestamp | None = None
    window_start: Timestamp | None = None
    counts: bool = Field(False, description="include per-bin counts")


class SinceQuery(Query):
    since: Timestamp | None = None


class AlertsQuery(PageQuery):
    status: Text | None = None
    model: Text | None = None


# --- rollouts ---------------------------------------------------------------------------------

Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
NonNeg = Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False)]


class TargetSpec(Strict):
    fleet: Name | None = None
    device_classes: Tags = []
    tags: Tags = []
    attributes: Annotated[dict[Key, Scalar | Annotated[list[Scalar], Field(max_length=256)]],
                          Field(max_length=64)] = {}
    device_ids: Annotated[list[Name], Field(max_length=100_000)] = []


# Bounds of the gates whose range is known; every other field of fleet.rollouts.spec.Gates is
# still accepted (finite float, int64 or bool by its type), so a new gate needs no edit here.
_GATE_BOUNDS: dict[str, Any] = {
    "min_reporting": Fraction, "min_success": Fraction, "max_failure_fraction": Fraction,
    "min_shadow_agreement": Fraction, "enabled": list[str],
    "report_timeout_s": Annotated[float, Field(gt=0, le=1e9, allow_inf_nan=False)],
    "min_windows": Annotated[int, Field(ge=1, le=INT64_MAX)],
}
_BY_TYPE: dict[Any, Any] = {float: NonNeg, int: Count, bool: bool}


def _gates_model() -> type[BaseModel]:
    """GatesSpec from the Gates dataclass itself: one list of gates, every one optional here
    (unset gates take the top-level `gates` or the dataclass default)."""
    import dataclasses
    import typing

    from fleet.rollouts.spec import Gates

    hints = typing.get_type_hints(Gates)
    fields: dict[str, Any] = {f.name: (_GATE_BOUNDS.get(f.name, _BY_TYPE.get(hints[f.name], Any)) | None, None)
                              for f in dataclasses.fields(Gates)}
    return create_model("GatesSpec", __base__=Strict, __doc__="Every gate is optional; see docs/rollouts.md.",
                        **fields)


GatesSpec = _gates_model()


class WaveSpecBody(Strict):
    name: Name
    percent: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)] | None = None
    count: Annotated[int, Field(ge=1, le=INT64_MAX)] | None = None
    gates: GatesSpec | None = None
    mode: Literal["install", "shadow", "ab"] = "install"
    fraction: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.1


class RolloutCreate(Strict):
    model_name: Name
    version: Version
    target: TargetSpec | None = None
    waves: Annotated[list[WaveSpecBody], Field(min_length=1, max_length=100)]
    gates: GatesSpec | None = None
    name: Annotated[str, Field(max_length=128)] = ""
    seed: Annotated[str, Field(max_length=128)] = ""
    allow_deprecated: bool = Field(False, description="roll out a deprecated version anyway (never a retired one)")


class RolloutListQuery(Query):
    status: Text | None = None


class TargetsQuery(Query):
    wave: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = None


class PauseBody(Strict):
    reason: Annotated[str, Field(max_length=2000)] = ""


class RollbackVersion(Strict):
    model_name: Name
    version: Version
    target: TargetSpec | None = None


class KeyRotate(Strict):
    new_key_path: Annotated[str, Field(max_length=4096)] | None = None
    keylist: dict[str, Any] | None = Field(None, description="root-signed key list (edgefleet keys sign-keylist)")


class KeyListUpload(Strict):
    keylist: dict[str, Any] = Field(description="signed key list (edgefleet keys sign-keylist)")


class KeyFinish(Strict):
    force: bool = False


# --- profiles (issue 13 item 8: a candidate timed on a device of its class) --------------------

class ProfileQuery(Query):
    warmup: Annotated[int, Field(ge=0, le=200, description="untimed runs first")] = 5
    runs: Annotated[int, Field(ge=1, le=2000, description="timed batch-1 runs")] = 50
    device_id: DeviceId | None = Field(None, description="this device (else any online one of the class)")
    fleet: Name | None = None
    ttl_s: Annotated[float, Field(ge=10, le=86400, allow_inf_nan=False)] = 600.0


def dump(model: BaseModel) -> dict:  # type: ignore[type-arg]
    """The fields the caller gave (not defaults), for handing on to the domain layer."""
    return model.model_dump(exclude_unset=True)


# --- outcomes (issue 14) ----------------------------------------------------------------------

class OutcomeItem(Strict):
    request_id: Annotated[str, Field(min_length=1, max_length=80)]
    label: Float = Field(description="the true class index (classification) or value (regression)")


class OutcomesBody(Strict):
    """Labels from a downstream system, joined by request id with the prediction records devices sent."""

    outcomes: Annotated[list[OutcomeItem], Field(min_length=1, max_length=200_000)]


class QualityQuery(Query):
    since: Float | None = Field(None, description="only windows ending at or after this UNIX time")
    min_labelled: Annotated[int, Field(ge=1, le=INT32_MAX)] = 200
