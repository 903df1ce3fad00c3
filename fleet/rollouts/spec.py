"""The rollout spec: what to ship, to whom, in which waves, and which gates each wave must pass.

Plain dataclasses with validation, so the API, the service and the tests all speak one shape.
Wave sizes are cumulative (a wave of 10% means "10% of the targeted devices have the version
once this wave is done"), by percent or by device count; the last wave is usually 100%.

A stored spec carries `schema_version`. API input is parsed strictly (`from_dict`: unknown
fields refused); a stored spec is read leniently (`from_stored`: migrated from its version,
unknown fields dropped, missing ones defaulted, not re-validated), so renaming a field never
breaks a rollout in flight (see spec_migrations.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from fleet.rollouts.spec_migrations import SCHEMA_VERSION, SpecVersionError, migrate, renamed_from

MODES = ("install", "shadow", "ab")
REQUIRED_GATES = ("installs", "success")   # a wave always counts its devices
log = logging.getLogger(__name__)


class SpecError(ValueError):
    """The rollout spec is invalid; the message names the field."""


@dataclass(frozen=True)
class TargetFilter:
    """Which devices a rollout targets. Every given condition must hold (AND)."""

    fleet: str = "default"
    device_classes: tuple[str, ...] = ()      # empty: any class
    tags: tuple[str, ...] = ()                 # the device must carry all of them
    attributes: Mapping[str, Any] = field(default_factory=dict)  # value or list of accepted values
    device_ids: tuple[str, ...] = ()           # explicit allow-list (empty: any)

    def matches(self, fleet: str, device_id: str, device_class: str, tags: list[str] | None,
                attributes: Mapping[str, Any] | None) -> bool:
        if fleet != self.fleet:
            return False
        if self.device_classes and device_class not in self.device_classes:
            return False
        if self.device_ids and device_id not in self.device_ids:
            return False
        have = set(tags or ())
        if any(t not in have for t in self.tags):
            return False
        attrs = attributes or {}
        for key, want in self.attributes.items():
            value = attrs.get(key)
            if isinstance(want, (list, tuple)):
                if value not in want:
                    return False
            elif value != want:
                return False
        return True


@dataclass(frozen=True)
class Gates:
    """Thresholds one wave must meet before the next wave starts; any breach pauses and rolls back.

    Fractions are of the wave's devices. Statistical gates (errors, latency, drift, shadow) are
    only judged once `min_requests` requests of evidence exist, so a quiet canary waits rather
    than passing on nothing.
    """

    min_reporting: float = 1.0            # fraction of wave devices with candidate telemetry
    report_timeout_s: float = 300.0       # a device silent this long after its command has failed
    min_success: float = 1.0              # fraction installed and healthy (was success_threshold, v1)
    max_failure_fraction: float = 0.0     # failed installs + local rollbacks + silent devices
    max_error_rate_delta: float = 0.02    # candidate error rate minus control error rate
    max_latency_p99_ratio: float = 1.5    # candidate p99 / previous version p99, same device class
    latency_slack_us: float = 1000.0      # ... and only when p99 is also this much slower (noise floor)
    max_prediction_psi: float = 0.2
    max_feature_psi: float = 0.25
    min_drift_samples: int = 300          # PSI from fewer predictions is noise (empty bins explode it)
    min_shadow_agreement: float = 0.9     # only judged in shadow mode
    min_requests: int = 50
    min_windows: int = 1                  # telemetry windows per reporting device
    soak_s: float = 0.0
    require_approval: bool = False
    # online quality from labelled outcomes (issue 14; fleet.analytics). 0 labels = gate off.
    min_labelled: int = 0                 # labels per cohort before online_accuracy/slice_gap judge
    max_accuracy_drop: float = 0.02       # candidate below control (or build eval) by more than this ...
    accuracy_alpha: float = 0.05          # ... in a one-sided test at this level fails the wave
    max_slice_gap_increase: float = 1.0   # worst-slice gap over the build-time gap (1.0 = off)
    min_slice_labelled: int = 30          # labels a slice needs before it counts in the gap
    # the gates this wave is judged by, by name (fleet.rollouts.gates.REGISTRY); default: all of them
    enabled: tuple[str, ...] = field(default_factory=lambda: _registered())

    def __post_init__(self) -> None:
        if isinstance(self.enabled, list):   # from JSON
            object.__setattr__(self, "enabled", tuple(self.enabled))

    def validate(self, where: str) -> None:
        self._validate_enabled(where)
        for name in ("min_reporting", "min_success", "max_failure_fraction", "min_shadow_agreement"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise SpecError(f"{where}.{name} must be within [0, 1], got {v}")
        for name in ("report_timeout_s", "max_latency_p99_ratio", "max_prediction_psi", "max_feature_psi",
                     "soak_s", "max_error_rate_delta", "latency_slack_us"):
            if getattr(self, name) < 0:
                raise SpecError(f"{where}.{name} must not be negative")
        if self.report_timeout_s <= 0:
            raise SpecError(f"{where}.report_timeout_s must be positive (a silent device must fail)")
        if self.min_labelled < 0 or self.min_slice_labelled < 1 or not 0.0 < self.accuracy_alpha < 0.5 \
                or not 0.0 <= self.max_accuracy_drop <= 1.0 or not 0.0 <= self.max_slice_gap_increase <= 1.0:
            raise SpecError(f"{where}: min_labelled >= 0, min_slice_labelled >= 1, accuracy_alpha in (0, 0.5), "
                            "max_accuracy_drop and max_slice_gap_increase in [0, 1] are required")
        if self.min_requests < 0 or self.min_windows < 1 or self.min_drift_samples < 0:
            raise SpecError(f"{where}.min_requests >= 0 and min_windows >= 1 are required")

    def _validate_enabled(self, where: str) -> None:
        known = _registered()
        if not isinstance(self.enabled, tuple) or not all(isinstance(n, str) for n in self.enabled):
            raise SpecError(f"{where}.enabled must be a list of gate names ({', '.join(known)})")
        unknown = [n for n in self.enabled if n not in known]
        if unknown:
            raise SpecError(f"{where}.enabled names unknown gates {unknown}; known: {', '.join(known)}")
        missing = [n for n in REQUIRED_GATES if n not in self.enabled]
        if missing:
            raise SpecError(f"{where}.enabled must include {', '.join(missing)} (a wave always counts its devices)")


def _registered() -> tuple[str, ...]:
    from fleet.rollouts.gates import REGISTRY  # the registry imports this module

    return REGISTRY.names()


@dataclass(frozen=True)
class WaveSpec:
    """One wave: its cumulative size and its gates. `mode` shadow/ab runs the candidate beside the
    current model on these devices first (fraction = shadow sample rate, share = A/B share)."""

    name: str
    percent: float | None = None
    count: int | None = None
    gates: Gates = field(default_factory=Gates)
    mode: str = "install"
    fraction: float = 0.1

    def validate(self, i: int) -> None:
        where = f"waves[{i}]"
        if (self.percent is None) == (self.count is None):
            raise SpecError(f"{where} needs exactly one of percent or count")
        if self.percent is not None and not 0 < self.percent <= 100:
            raise SpecError(f"{where}.percent must be within (0, 100]")
        if self.count is not None and self.count < 1:
            raise SpecError(f"{where}.count must be at least 1")
        if self.mode not in MODES:
            raise SpecError(f"{where}.mode must be one of {MODES}")
        if not 0 < self.fraction <= 1:
            raise SpecError(f"{where}.fraction must be within (0, 1]")
        self.gates.validate(where + ".gates")


@dataclass(frozen=True)
class RolloutSpec:
    model_name: str
    version: int
    target: TargetFilter = field(default_factory=TargetFilter)
    waves: tuple[WaveSpec, ...] = ()
    name: str = ""
    seed: str = ""     # assignment salt; empty: "{model_name}:{version}" so a rerun picks the same devices

    @property
    def assignment_seed(self) -> str:
        return self.seed or f"{self.model_name}:{self.version}"

    def validate(self) -> RolloutSpec:
        if not self.model_name:
            raise SpecError("model_name is required")
        if not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 0:
            raise SpecError("version must be a non-negative integer")
        if not self.waves:
            raise SpecError("at least one wave is required")
        for i, w in enumerate(self.waves):
            w.validate(i)
        sizes = [(w.percent, w.count) for w in self.waves]
        pcts = [p for p, _ in sizes if p is not None]
        counts = [c for _, c in sizes if c is not None]
        if pcts != sorted(pcts) or counts != sorted(counts):
            raise SpecError("wave sizes are cumulative and must not decrease")
        names = [w.name for w in self.waves]
        if len(set(names)) != len(names):
            raise SpecError("wave names must be unique")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target"]["attributes"] = dict(self.target.attributes)
        everything = _registered()
        for w in d["waves"]:   # all gates (the default) is left out: GATES_BY_VERSION says which they were
            enabled = w["gates"].pop("enabled")
            if tuple(enabled) != everything:
                w["gates"]["enabled"] = list(enabled)
        return {"schema_version": SCHEMA_VERSION, **d}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutSpec:
        """Parse and validate API input (or a spec file). Unknown keys are refused."""
        return _parse(data, strict=True).validate()

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> RolloutSpec:
        """A spec as stored on a Rollout row, whatever version wrote it: migrated to the current
        shape, unknown keys dropped, missing ones defaulted. Not re-validated: it was valid when
        the rollout was created, and a rule tightened since must not stop a rollout in flight."""
        return _parse(data, strict=False)


_TOP = ("model_name", "version", "target", "waves", "gates", "name", "seed", "schema_version")


def _parse(data: Mapping[str, Any], *, strict: bool) -> RolloutSpec:
    try:
        data = migrate(data, strict=strict)
        known = _known_in(strict)
        t = known(dict(data.get("target") or {}), TargetFilter, "target")
        target = TargetFilter(fleet=str(t.get("fleet", "default")), device_classes=tuple(t.get("device_classes") or ()),
                              tags=tuple(t.get("tags") or ()), attributes=dict(t.get("attributes") or {}),
                              device_ids=tuple(t.get("device_ids") or ()))
        defaults = known(dict(data.get("gates") or {}), Gates, "gates")
        waves = []
        for i, w in enumerate(data.get("waves") or ()):
            w = dict(w)
            gates = known({**defaults, **dict(w.pop("gates", None) or {})}, Gates, f"waves[{i}].gates")
            if "enabled" in gates:
                gates["enabled"] = _names(gates["enabled"], f"waves[{i}].gates.enabled")
            w = known(w, WaveSpec, f"waves[{i}]")
            waves.append(WaveSpec(gates=Gates(**gates), **w))
        if not waves:
            raise SpecError("at least one wave is required")
        known({k: v for k, v in data.items() if k not in _TOP}, RolloutSpec, "spec")
        return RolloutSpec(model_name=str(data["model_name"]), version=data["version"], target=target,
                           waves=tuple(waves), name=str(data.get("name") or ""), seed=str(data.get("seed") or ""))
    except KeyError as exc:
        raise SpecError(f"missing field {exc}") from exc
    except (TypeError, AttributeError) as exc:
        raise SpecError(f"invalid spec: {exc}") from exc
    except SpecVersionError as exc:
        raise SpecError(str(exc)) from exc


def _names(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)) and all(isinstance(n, str) for n in value):
        return tuple(value)
    raise SpecError(f"{where} must be a list of gate names")


def _known_in(strict: bool) -> Any:
    """Strict: refuse unknown fields (naming a renamed one's new name). Lenient: drop them."""

    def known(d: dict[str, Any], typ: type, where: str) -> dict[str, Any]:
        extra = sorted(set(d) - set(typ.__dataclass_fields__))
        if extra and strict:
            hints = [f"{x} is now {renamed_from(x)}" for x in extra if renamed_from(x)]
            raise SpecError(f"{where} has unknown fields {extra}" + (f" ({'; '.join(hints)})" if hints else ""))
        if extra:
            log.debug("stored rollout spec: %s fields %s dropped", where, extra)
        return {k: v for k, v in d.items() if k not in extra}

    return known


def standard_waves(gates: Gates | None = None, percents: tuple[float, ...] = (1, 10, 50, 100),
                   shadow_first: bool = False) -> tuple[WaveSpec, ...]:
    """The usual canary ladder (1%, 10%, 50%, 100%), optionally shadowing on the canary first."""
    g = gates or Gates()
    waves = [WaveSpec(name=f"wave-{i}-{p:g}pct", percent=p, gates=g) for i, p in enumerate(percents)]
    if shadow_first:
        waves[0] = replace(waves[0], mode="shadow")
    return tuple(waves)
