"""Quality gates: budgets (from the device class, overridden by flags) checked against a build."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from agent.device_classes import DeviceClass
from compiler.evaluate import QualityMetrics


@dataclass(frozen=True)
class Budgets:
    max_accuracy_drop: float
    max_slice_gap_increase: float
    max_size_mb: float
    max_latency_ms: float

    @classmethod
    def for_device(cls, dc: DeviceClass, *, max_accuracy_drop: float | None = None,
                   max_slice_gap_increase: float | None = None, max_size_mb: float | None = None,
                   max_latency_ms: float | None = None) -> Budgets:
        return cls(
            max_accuracy_drop=dc.max_accuracy_drop if max_accuracy_drop is None else float(max_accuracy_drop),
            max_slice_gap_increase=(dc.max_slice_gap_increase if max_slice_gap_increase is None
                                    else float(max_slice_gap_increase)),
            max_size_mb=dc.max_model_bytes / 2**20 if max_size_mb is None else float(max_size_mb),
            max_latency_ms=dc.latency_budget_ms if max_latency_ms is None else float(max_latency_ms),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateResult:
    gate: str
    value: float
    budget: float
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_gates(q: QualityMetrics, size_bytes: int, latency_p99_ms: float, budgets: Budgets) -> list[GateResult]:
    """One result per gate; the names match the CLI flags so a failure says which budget to look at."""
    size_mb = size_bytes / 2**20
    drop_label = "accuracy" if q.task == "classification" else q.metric_name
    return [
        GateResult("max-accuracy-drop", q.drop, budgets.max_accuracy_drop, q.drop <= budgets.max_accuracy_drop + 1e-12,
                   f"{drop_label} {q.metric:.4f} vs reference {q.reference_metric:.4f} (drop {q.drop:.4f}, "
                   f"budget {budgets.max_accuracy_drop:.4f})"),
        GateResult("max-slice-gap-increase", q.slice_gap_increase, budgets.max_slice_gap_increase,
                   q.slice_gap_increase <= budgets.max_slice_gap_increase + 1e-12,
                   f"slice gap {q.slice_gap:.4f} vs reference {q.reference_slice_gap:.4f}"
                   + (f", worst slice {q.worst_slice!r}" if q.worst_slice is not None else "")),
        GateResult("max-size-mb", round(size_mb, 6), budgets.max_size_mb, size_mb <= budgets.max_size_mb,
                   f"{size_mb:.3f} MB (budget {budgets.max_size_mb:.3f} MB)"),
        GateResult("max-latency-ms", latency_p99_ms, budgets.max_latency_ms, latency_p99_ms <= budgets.max_latency_ms,
                   f"p99 {latency_p99_ms:.3f} ms on this machine (budget {budgets.max_latency_ms:.3f} ms)"),
    ]


def failed(results: list[GateResult]) -> list[GateResult]:
    return [g for g in results if not g.passed]
