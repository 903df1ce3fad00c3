"""What the rollout pages show beside the raw detail: gate tables that explain themselves, wave
progress segments by target status, and the actions the rollout's state allows.

Tables, not if-chains: a gate's meaning and direction, a target status's colour and pattern, and
a rollout status's allowed actions are each one dict, so the pages and the tests read the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# gate -> (what it measures, comparison the measured value must satisfy, unit)
GATES: dict[str, tuple[str, str, str]] = {
    "installs": ("Share of the wave's devices whose install failed (refused, crashed, rolled back on the device).",
                 "≤", "share"),
    "success": ("Share of the wave's devices that installed the candidate and report healthy telemetry.",
                "≥", "share"),
    "reporting": ("Share of the wave's devices that sent enough telemetry windows to be judged.", "≥", "share"),
    "errors": ("Candidate error rate minus the control's (devices still on the previous version).", "≤", "share"),
    "latency_p99": ("Candidate p99 latency divided by the control's, worst device class.", "≤", "ratio"),
    "prediction_drift": ("PSI of the candidate's prediction distribution against the control or the baseline.",
                         "≤", "psi"),
    "feature_drift": ("Largest input-feature PSI against the manifest baseline or the control.", "≤", "psi"),
    "shadow_agreement": ("Share of requests on which the shadow candidate agreed with the served model.",
                         "≥", "share"),
}

VERDICTS = {"pass": ("ok", "✓ pass"), "fail": ("alert", "✗ fail"), "wait": ("warn", "… wait")}

# target status -> (css class: colour and pattern, label); order is the stacking order
TARGET_STATUSES: dict[str, str] = {
    "healthy": "healthy", "promoted": "promoted", "installed": "installed", "commanded": "commanded",
    "pending": "pending", "rolling-back": "rolling back", "rolled-back": "rolled back", "failed": "failed",
    "skipped": "skipped",
}

# rollout status -> console actions an operator may take (the service refuses the others with 409)
ACTIONS: dict[str, tuple[str, ...]] = {
    "running": ("pause", "abort", "rollback"),
    "awaiting-approval": ("approve", "pause", "abort", "rollback"),
    "paused": ("resume", "abort", "rollback"),
    "aborted": ("rollback",),
    "completed": ("rollback",),
    "rolled-back": (),
}


@dataclass(frozen=True)
class GateRow:
    gate: str
    meaning: str
    rule: str          # e.g. "≤ 0.2"
    threshold: str
    measured: str
    verdict: str
    verdict_class: str
    verdict_label: str
    detail: str


def _fmt(v: Any, unit: str) -> str:
    if v is None:
        return "—"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if unit == "share":
        return f"{f:.4g} ({f * 100:.1f}%)"
    if unit == "ratio":
        return f"{f:.3g}×"
    return f"{f:.4g}"


def _detail(d: Mapping[str, Any] | None) -> str:
    """The evidence dict as short `key: value` text (lists cut at five items)."""
    parts = []
    for k, v in (d or {}).items():
        if v in ([], {}, None, ""):
            continue
        if isinstance(v, list):
            v = ", ".join(map(str, v[:5])) + (f" (+{len(v) - 5})" if len(v) > 5 else "")
        elif isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in list(v.items())[:5])
        parts.append(f"{k.replace('_', ' ')}: {v}")
    return "; ".join(parts)


def gate_rows(results: Sequence[Mapping[str, Any]] | None) -> list[GateRow]:
    rows = []
    for g in results or []:
        name = str(g.get("gate", ""))
        meaning, op, unit = GATES.get(name, ("", "", ""))
        cls, label = VERDICTS.get(str(g.get("status")), ("warn", str(g.get("status"))))
        thr = _fmt(g.get("threshold"), unit)
        rows.append(GateRow(name, meaning, f"{op} {thr}".strip(), thr, _fmt(g.get("value"), unit),
                            str(g.get("status")), cls, label, _detail(g.get("detail"))))
    return rows


def wave_segments(counts: Mapping[str, int]) -> list[dict[str, Any]]:
    """Stacked progress segments in a fixed order, each with its status, label, count and width."""
    total = sum(counts.values()) or 1
    order = list(TARGET_STATUSES) + sorted(set(counts) - set(TARGET_STATUSES))
    return [{"status": s, "label": TARGET_STATUSES.get(s, s), "n": counts[s], "pct": round(100 * counts[s] / total, 2)}
            for s in order if counts.get(s)]


def allowed_actions(status: str) -> tuple[str, ...]:
    return ACTIONS.get(status, ())


def thresholds(detail: Mapping[str, Any]) -> dict[str, float]:
    """gate -> threshold, from the latest verdict that names it (for the charts' limit lines)."""
    out: dict[str, float] = {}
    for w in detail.get("waves") or []:
        for g in w.get("gates") or []:
            if g.get("threshold") is not None:
                out[str(g["gate"])] = float(g["threshold"])
    return out


def why(reason: Mapping[str, Any] | None) -> str:
    """One line for the overview: the breached gate with measured value vs threshold."""
    if not reason:
        return ""
    gates = reason.get("gates") or []
    if gates:
        parts = []
        for g in gates:
            _, op, unit = GATES.get(g.get("gate", ""), ("", "", ""))
            parts.append(f"{g.get('gate')} {_fmt(g.get('value'), unit)} (limit {op} {_fmt(g.get('threshold'), unit)})")
        return f"{reason.get('kind', 'breach')} in wave {reason.get('wave_name', reason.get('wave', ''))}: " + \
            "; ".join(parts)
    return str(reason.get("summary") or reason.get("why") or reason.get("kind") or "")
