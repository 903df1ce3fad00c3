"""Quality gates: budgets (from the device class, overridden by flags) checked against a build.

Gates are a registry in the shared shape (edgefleet.gates): each one names the budget it holds
the build to (the same name as its CLI flag / config key), the evidence it reads and how it
judges it; `check_gates` evaluates the registry. A failure names the gate, so a report says
"min-cosine failed", not just "quality".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from agent.device_classes import DeviceClass
from compiler.evaluate import QualityMetrics
from edgefleet.gates import FAIL, PASS, GateRegistry, GateVerdict

# Worst-case budgets no device-class file sets: the embedding cosine of the worst sample and of the
# 1st percentile, and the regression 99th-percentile error (in reference standard deviations).
DEFAULT_MIN_COSINE = 0.98
DEFAULT_MIN_P1_COSINE = 0.99
DEFAULT_MAX_P99_ERROR = 0.25
# Off the target, a reduced-precision candidate must be at least this fast as FP32 ONNX Runtime
# measured side by side on the build host (10% is the measurement noise the chooser allows too).
DEFAULT_MIN_SPEEDUP = 0.9
# Fairness in absolute terms (issue 14): the worst-slice gap itself and the worst slice's own
# accuracy, not only the gap's growth over the reference. Not gated (None) unless the device
# class (`max_slice_gap`, `min_slice_accuracy` in its TOML), the config or the Python API sets them.


def _optional(flag: float | None, default: Any) -> float | None:
    return float(flag) if flag is not None else (None if default is None else float(default))


@dataclass(frozen=True)
class Budgets:
    max_accuracy_drop: float
    max_slice_gap_increase: float
    max_size_mb: float
    max_latency_ms: float
    min_cosine: float = DEFAULT_MIN_COSINE
    min_p1_cosine: float = DEFAULT_MIN_P1_COSINE
    max_p99_error: float = DEFAULT_MAX_P99_ERROR
    min_speedup: float = DEFAULT_MIN_SPEEDUP
    max_slice_gap: float | None = None
    min_slice_accuracy: float | None = None

    @classmethod
    def for_device(cls, dc: DeviceClass, *, max_accuracy_drop: float | None = None,
                   max_slice_gap_increase: float | None = None, max_size_mb: float | None = None,
                   max_latency_ms: float | None = None, min_cosine: float | None = None,
                   min_p1_cosine: float | None = None, max_p99_error: float | None = None,
                   min_speedup: float | None = None, max_slice_gap: float | None = None,
                   min_slice_accuracy: float | None = None) -> Budgets:
        def pick(flag: float | None, default: float) -> float:
            return default if flag is None else float(flag)

        return cls(
            max_accuracy_drop=pick(max_accuracy_drop, dc.max_accuracy_drop),
            max_slice_gap_increase=pick(max_slice_gap_increase, dc.max_slice_gap_increase),
            max_size_mb=pick(max_size_mb, dc.max_model_bytes / 2**20),
            max_latency_ms=pick(max_latency_ms, dc.latency_budget_ms),
            min_cosine=pick(min_cosine, float(dc.extra.get("min_cosine", DEFAULT_MIN_COSINE))),
            min_p1_cosine=pick(min_p1_cosine, float(dc.extra.get("min_p1_cosine", DEFAULT_MIN_P1_COSINE))),
            max_p99_error=pick(max_p99_error, float(dc.extra.get("max_p99_error", DEFAULT_MAX_P99_ERROR))),
            min_speedup=pick(min_speedup, DEFAULT_MIN_SPEEDUP),
            max_slice_gap=_optional(max_slice_gap, dc.extra.get("max_slice_gap")),
            min_slice_accuracy=_optional(min_slice_accuracy, dc.extra.get("min_slice_accuracy")),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GateResult(GateVerdict):
    """A compiler gate's verdict (pass or fail, never wait: a build has all its evidence), read
    as the report and manifest always have: value, budget (the threshold), passed, detail."""

    def __init__(self, gate: str, value: float, budget: float, passed: bool, detail: str) -> None:
        super().__init__(gate, PASS if passed else FAIL, value, budget, detail)

    @property
    def budget(self) -> float:
        return self.threshold  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        return {"gate": self.gate, "value": self.value, "budget": self.budget, "passed": self.passed,
                "detail": self.detail}


@dataclass(frozen=True)
class Latency:
    """What the latency gate knows: p99 on this host, and whether this host stands for the target."""

    p99_ms: float
    on_target: bool = True
    speedup: float | None = None  # FP32 ONNX Runtime p50 / candidate p50, measured side by side
    why_not: str = ""


@dataclass(frozen=True)
class Evidence:
    """What a candidate's gates read: its quality against the reference, file size, latency."""

    quality: QualityMetrics
    size_bytes: int
    latency: Latency


def _within(value: float, budget: float, higher_is_better: bool) -> bool:
    return value >= budget - 1e-12 if higher_is_better else value <= budget + 1e-12


@dataclass(frozen=True)
class QualityGate:
    """A quality metric held to a budget; skipped for other tasks and when nobody set the budget."""

    name: str
    tasks: tuple[str, ...]
    budget: str  # Budgets field
    value: Callable[[QualityMetrics], float]
    higher_is_better: bool
    describe: Callable[[QualityMetrics, float], str]
    applies: Callable[[QualityMetrics], bool] = lambda q: True
    needs: ClassVar[tuple[str, ...]] = ("quality",)

    def evaluate(self, ev: Evidence, budgets: Budgets) -> GateResult | None:
        q = ev.quality
        budget = getattr(budgets, self.budget)
        if q.task not in self.tasks or not self.applies(q) or budget is None:
            return None
        value = self.value(q)
        return GateResult(self.name, value, budget, _within(value, budget, self.higher_is_better),
                          self.describe(q, budget))


@dataclass(frozen=True)
class SizeGate:
    name: str = "max-size-mb"
    needs: tuple[str, ...] = ("size_bytes",)

    def evaluate(self, ev: Evidence, budgets: Budgets) -> GateResult:
        size_mb = ev.size_bytes / 2**20
        return GateResult(self.name, round(size_mb, 6), budgets.max_size_mb, size_mb <= budgets.max_size_mb,
                          f"{size_mb:.3f} MB (budget {budgets.max_size_mb:.3f} MB)")


@dataclass(frozen=True)
class LatencyGate:
    """p99 on this host when it stands for the target; off target it is reported, not gated,
    unless a side-by-side speedup stands in (then `min-speedup` decides instead)."""

    name: str = "max-latency-ms"
    needs: tuple[str, ...] = ("latency",)

    def evaluate(self, ev: Evidence, budgets: Budgets) -> GateResult | None:
        lat, budget = ev.latency, budgets.max_latency_ms
        if lat.on_target:
            return GateResult(self.name, lat.p99_ms, budget, lat.p99_ms <= budget,
                              f"p99 {lat.p99_ms:.3f} ms on this machine (budget {budget:.3f} ms)")
        if lat.speedup is None:  # nothing on this host stands for the target's speed
            return GateResult(self.name, lat.p99_ms, budget, True,
                              f"not measured on target ({lat.why_not}); p99 {lat.p99_ms:.3f} ms here is not gated")
        return None


@dataclass(frozen=True)
class SpeedupGate:
    """Off target, a reduced-precision candidate against FP32 ONNX Runtime side by side."""

    name: str = "min-speedup"
    needs: tuple[str, ...] = ("latency",)

    def evaluate(self, ev: Evidence, budgets: Budgets) -> GateResult | None:
        lat = ev.latency
        if lat.on_target or lat.speedup is None:
            return None
        return GateResult(self.name, round(lat.speedup, 4), budgets.min_speedup, lat.speedup >= budgets.min_speedup,
                          f"not measured on target ({lat.why_not}); {lat.speedup:.2f}x FP32 ONNX Runtime side by "
                          f"side on this host (budget {budgets.min_speedup:.2f}x)")


_ALL = ("classification", "embedding", "regression", "detection")
QUALITY_GATES: tuple[QualityGate, ...] = (
    QualityGate("max-accuracy-drop", _ALL, "max_accuracy_drop", lambda q: q.drop, False,
                lambda q, b: f"{'accuracy' if q.task == 'classification' else q.metric_name} {q.metric:.4f} vs "
                             f"reference {q.reference_metric:.4f} (drop {q.drop:.4f}, budget {b:.4f})"),
    QualityGate("max-slice-gap-increase", _ALL, "max_slice_gap_increase", lambda q: q.slice_gap_increase, False,
                lambda q, b: f"slice gap {q.slice_gap:.4f} vs reference {q.reference_slice_gap:.4f}"
                             + (f", worst slice {q.worst_slice!r}" if q.worst_slice is not None else "")),
    QualityGate("max-slice-gap", _ALL, "max_slice_gap", lambda q: q.slice_gap, False,
                lambda q, b: f"worst-slice gap {q.slice_gap:.4f} (budget {b:.4f}), worst slice {q.worst_slice!r}",
                lambda q: bool(q.slices)),
    QualityGate("min-slice-accuracy", ("classification",), "min_slice_accuracy", lambda q: min(q.slices.values()),
                True, lambda q, b: f"worst slice {q.worst_slice!r} accuracy {min(q.slices.values()):.4f} "
                                   f"(budget {b:.4f})",
                lambda q: bool(q.slices)),
    QualityGate("min-cosine", ("embedding",), "min_cosine", lambda q: q.min_score, True,
                lambda q, b: f"worst sample cosine {q.min_score:.4f} (mean {q.metric:.4f}, budget {b:.4f})"),
    QualityGate("min-p1-cosine", ("embedding",), "min_p1_cosine", lambda q: q.p1_score, True,
                lambda q, b: f"1st-percentile cosine {q.p1_score:.4f} (budget {b:.4f})"),
    QualityGate("max-p99-error", ("regression",), "max_p99_error", lambda q: q.p99_error, False,
                lambda q, b: f"99th-percentile error {q.p99_error:.4f} reference std (budget {b:.4f})"),
)
# In report order: quality first, then size, then latency (on target) or speedup (off target).
COMPILER_GATES: GateRegistry[Evidence, Budgets] = GateRegistry(
    "compiler", [*QUALITY_GATES, SizeGate(), LatencyGate(), SpeedupGate()])
# Gates a layer returned to float can fix (size and latency it cannot).
QUALITY_GATE_NAMES = frozenset(g.name for g in COMPILER_GATES if g.needs == ("quality",))
LATENCY_GATE_NAMES = frozenset(g.name for g in COMPILER_GATES if g.needs == ("latency",))


def check_gates(q: QualityMetrics, size_bytes: int, latency: Latency | float, budgets: Budgets) -> list[GateResult]:
    """One result per gate that applies to the task; names match the CLI flags and config keys."""
    lat = latency if isinstance(latency, Latency) else Latency(float(latency))
    return COMPILER_GATES.evaluate(Evidence(q, size_bytes, lat), budgets)  # type: ignore[return-value]


def failed(results: list[GateResult]) -> list[GateResult]:
    return [g for g in results if not g.passed]
