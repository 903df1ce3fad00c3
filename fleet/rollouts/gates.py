"""Gate verdicts as pure functions: evidence in, verdict out. No database, no clock reads, so
every threshold is unit-testable and a verdict can be recomputed from stored evidence.

Each gate answers pass, fail or wait (not enough evidence yet). A wave advances when every gate
passes; any fail is a breach (pause + rollback). Waiting never lasts forever: a device silent
for `report_timeout_s` after its command is a failure, so the install gate decides eventually.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgefleet.gates import FAIL, PASS, WAIT, GateRegistry, GateVerdict, overall
from fleet.drift import engine
from fleet.rollouts.spec import Gates
from fleet.rollouts.verdict import (  # the types live there; evidence.py and tests import them from here
    HEALTHY,
    PENDING,
    CohortStats,
    DeviceEvidence,
    Verdict,
    WaveEvidence,
    device_outcome,
)

GateResult = GateVerdict   # one gate shape (edgefleet.gates), the name the gate functions use
LATENCY_MIN_SAMPLES = 200   # a p99 from fewer samples is one outlier, not a tail
FEATURE_DRIFT_SHARE = 0.3   # share of features whose PSI is over the limit that counts as drift


# ------------------------------------------------------------------------------------------
# the gates


def gate_installs(outcomes: Mapping[str, str], g: Gates) -> GateResult:
    total = len(outcomes)
    failed = sorted(d for d, o in outcomes.items() if o.startswith("failed"))
    frac = len(failed) / total if total else 0.0
    reasons: dict[str, int] = {}
    for d in failed:
        r = outcomes[d].split(":", 1)[1]
        reasons[r] = reasons.get(r, 0) + 1
    status = FAIL if frac > g.max_failure_fraction + 1e-12 else PASS
    return GateResult("installs", status, round(frac, 6), g.max_failure_fraction,
                      {"failed": failed[:50], "reasons": reasons, "total": total})


def gate_success(outcomes: Mapping[str, str], g: Gates) -> GateResult:
    total = len(outcomes)
    healthy = sum(1 for o in outcomes.values() if o == HEALTHY)
    pending = sum(1 for o in outcomes.values() if o == PENDING)
    frac = healthy / total if total else 1.0
    if frac + 1e-12 >= g.min_success:
        status = PASS
    elif pending == 0 or (healthy + pending) / total + 1e-12 < g.min_success:
        status = FAIL     # cannot be reached any more
    else:
        status = WAIT
    return GateResult("success", status, round(frac, 6), g.min_success,
                      {"healthy": healthy, "pending": pending, "total": total})


def gate_reporting(devices: list[DeviceEvidence], outcomes: Mapping[str, str], g: Gates) -> GateResult:
    total = len(devices)
    reporting = sum(1 for d in devices if d.windows >= g.min_windows)
    frac = reporting / total if total else 1.0
    pending = sum(1 for o in outcomes.values() if o == PENDING)
    if frac + 1e-12 >= g.min_reporting:
        status = PASS
    elif pending == 0:
        status = FAIL
    else:
        status = WAIT
    return GateResult("reporting", status, round(frac, 6), g.min_reporting,
                      {"reporting": reporting, "total": total})


def gate_errors(cand: CohortStats, control: CohortStats, g: Gates) -> GateResult:
    if cand.requests < max(1, g.min_requests):
        return GateResult("errors", WAIT, None, g.max_error_rate_delta, {"requests": cand.requests})
    ref = control.error_rate if control.requests >= max(1, g.min_requests) else 0.0
    delta = cand.error_rate - ref
    status = FAIL if delta > g.max_error_rate_delta else PASS
    return GateResult("errors", status, round(delta, 6), g.max_error_rate_delta,
                      {"candidate_rate": round(cand.error_rate, 6), "control_rate": round(ref, 6),
                       "candidate_requests": cand.requests, "control_requests": control.requests})


def gate_latency(cand: CohortStats, previous: CohortStats, g: Gates) -> GateResult:
    """Candidate p99 over the previous version's p99 on the same device class; worst class counts."""
    worst: float | None = None
    per_class: dict[str, Any] = {}
    waiting = False
    need = max(1, g.min_requests, LATENCY_MIN_SAMPLES)
    for cls, hist in sorted(cand.latency.items()):
        ref = previous.latency.get(cls)
        if hist.total < need:
            waiting = True
            per_class[cls] = {"samples": hist.total, "status": WAIT}
            continue
        if ref is None or ref.total < need:
            per_class[cls] = {"p99_us": hist.quantile(0.99), "reference": None}
            continue
        c99, r99 = hist.quantile(0.99), ref.quantile(0.99)
        ratio = c99 / r99 if r99 > 0 else 1.0
        per_class[cls] = {"p99_us": round(c99, 1), "reference_p99_us": round(r99, 1), "ratio": round(ratio, 4)}
        if c99 - r99 <= g.latency_slack_us:
            ratio = min(ratio, g.max_latency_p99_ratio)   # within the noise floor: never a breach
            per_class[cls]["within_slack"] = True
        worst = ratio if worst is None else max(worst, ratio)
    if worst is not None and worst > g.max_latency_p99_ratio:
        return GateResult("latency_p99", FAIL, round(worst, 4), g.max_latency_p99_ratio, per_class)
    if waiting or not cand.latency:
        return GateResult("latency_p99", WAIT, None if worst is None else round(worst, 4),
                          g.max_latency_p99_ratio, per_class)
    return GateResult("latency_p99", PASS, None if worst is None else round(worst, 4),
                      g.max_latency_p99_ratio, per_class)


def chi2_quantile(dof: int, p: float = 0.999) -> float:
    """The chi-square quantile of the one drift engine (fleet.drift.engine.chi2_quantile)."""
    return engine.chi2_quantile(p, dof)


def psi_limit(configured: float, bins: int, n: int, m: int) -> float:
    """Under no drift PSI ~ (1/n + 1/m) chi2(B-1); never alarm below that noise floor (the engine's)."""
    return engine.psi_limit(configured, bins, n, m)


def drift_params(g: Gates, limit: float) -> engine.DriftParams:
    """The rollout gates' settings for the one drift engine: one limit (no warn level), half a
    count added to every bin of both sides (Jeffreys: one bin empty by chance in a small canary
    sample would otherwise add ~0.7 on its own), FEATURE_DRIFT_SHARE, and the spec's minimum
    samples for the canary and the control (a baseline counts from one sample: it is the build's)."""
    need = max(1, g.min_requests, g.min_drift_samples)
    return engine.DriftParams(psi_warn=limit, psi_alert=limit, min_samples=need, min_reference_samples=1,
                              dataset_drift_share=FEATURE_DRIFT_SHARE, pseudo_count=0.5)


def drift_verdict(cand: CohortStats, control: CohortStats, baseline: Mapping[str, Any] | None,
                  params: engine.DriftParams) -> engine.DriftVerdict:
    """The engine's judgement of the candidate against the baseline and the control cohort (what
    the drift gates decide on, and what the console's rollout drift view shows)."""
    refs: dict[str, Any] = {}
    if baseline:
        refs["baseline"] = baseline
    if control.features or control.prediction:
        refs["control"] = engine.Histograms.of(control.features, control.prediction)
    return engine.judge(engine.Histograms.of(cand.features, cand.prediction), refs, params)


def _psi_pair(ref: list[int] | np.ndarray, cur: list[int] | np.ndarray, configured: float) -> tuple[float, float]:
    """(PSI, limit) of one histogram pair with the gates' settings (Jeffreys smoothing)."""
    f = engine.feature_drift("pair", np.asarray(ref, dtype=np.int64), np.asarray(cur, dtype=np.int64),
                             engine.DriftParams(psi_warn=configured, psi_alert=configured, pseudo_count=0.5,
                                                min_samples=1, min_reference_samples=1))
    return f.psi, f.threshold_alert


def gate_prediction_drift(cand: CohortStats, control: CohortStats, baseline: Mapping[str, Any] | None,
                          g: Gates) -> GateResult:
    pred = cand.prediction
    n = int(sum(pred["counts"])) if pred else 0
    params = drift_params(g, g.max_prediction_psi)
    if not pred or n < params.min_samples:
        return GateResult("prediction_drift", WAIT, None, g.max_prediction_psi, {"samples": n})
    v = drift_verdict(cand, control, baseline, params)
    detail: dict[str, Any] = {"samples": n, **{label: {"psi": round(f.psi, 5), "limit": round(f.threshold_alert, 5)}
                                               for label, f in v.prediction.items()}}
    if not v.prediction:
        return GateResult("prediction_drift", PASS, None, g.max_prediction_psi, {**detail, "reference": None})
    worst = max(v.prediction.values(), key=lambda f: f.psi - f.threshold_alert)
    return GateResult("prediction_drift", FAIL if v.prediction_breach else PASS, round(worst.psi, 5),
                      g.max_prediction_psi, detail)


def gate_feature_drift(cand: CohortStats, control: CohortStats, baseline: Mapping[str, Any] | None,
                       g: Gates) -> GateResult:
    """Share (importance mass, issue 15) of features drifted against the baseline or the control."""
    params = drift_params(g, g.max_feature_psi)
    v = drift_verdict(cand, control, baseline, params)
    if not v.judged:
        status = WAIT if cand.features and not any(sum(f["counts"]) >= params.min_samples
                                                   for f in cand.features.values()) else PASS
        return GateResult("feature_drift", status, None, g.max_feature_psi, {"features": 0})
    detail: dict[str, Any] = {"drifted": v.drifted, "judged": len(v.judged), "share": v.share,
                              "summary": v.summary()}
    ws = v.weighting
    if ws is not None and ws.weighted:
        detail.update(weighted_by="importance", count_share=ws.count_share, ignored=ws.ignored)
    return GateResult("feature_drift", FAIL if v.dataset_drift else PASS, None if v.worst_psi is None
                      else round(v.worst_psi, 5), g.max_feature_psi, detail)


def gate_shadow(cand: CohortStats, g: Gates) -> GateResult:
    if cand.shadow_compared < max(1, g.min_requests):
        return GateResult("shadow_agreement", WAIT, None, g.min_shadow_agreement,
                          {"compared": cand.shadow_compared})
    agree = cand.shadow_agreed / cand.shadow_compared
    return GateResult("shadow_agreement", PASS if agree + 1e-12 >= g.min_shadow_agreement else FAIL,
                      round(agree, 5), g.min_shadow_agreement,
                      {"compared": cand.shadow_compared, "agreed": cand.shadow_agreed})


def gate_online_accuracy(cand: CohortStats, control: CohortStats, baseline: Mapping[str, Any] | None,
                         g: Gates) -> GateResult:
    """Concept drift at the canary: the candidate's labelled accuracy against control (or, while
    control has too few labels, the build-time eval), one-sided test (fleet.analytics.verdicts)."""
    from fleet.analytics import OnlineQuality, build_accuracy, concept_drift

    q = cand.quality or OnlineQuality()
    ref = build_accuracy({"metrics": (baseline or {}).get("build_metrics") or {}})
    v = concept_drift(q, reference=ref, control=control.quality, min_labelled=g.min_labelled,
                      margin=g.max_accuracy_drop, alpha=g.accuracy_alpha)
    # measured in the threshold's unit: the accuracy drop below the reference (the accuracy is in detail)
    drop = None if v.value is None or v.reference is None else round(v.reference - v.value, 6)
    return GateResult("online_accuracy", v.status, drop, g.max_accuracy_drop,
                      {"reference": v.reference, **v.detail, "accuracy": q.accuracy()})


def gate_slice_gap(cand: CohortStats, baseline: Mapping[str, Any] | None, g: Gates) -> GateResult:
    from fleet.analytics import OnlineQuality, build_slice_gap, slice_gap

    q = cand.quality or OnlineQuality()
    if q.labelled < g.min_labelled:
        return GateResult("slice_gap", WAIT, None, g.max_slice_gap_increase, {"labelled": q.labelled})
    v = slice_gap(q, build_gap=build_slice_gap({"metrics": (baseline or {}).get("build_metrics") or {}}),
                  max_increase=g.max_slice_gap_increase, min_slice_count=g.min_slice_labelled)
    if v.status == WAIT:  # fewer than two slices with enough labels: nothing to compare
        v.status = PASS
    return GateResult("slice_gap", v.status, v.value, g.max_slice_gap_increase, v.detail)


# ------------------------------------------------------------------------------------------
# the registry: a spec's `gates.enabled` names gates from it; evaluate_wave iterates it


@dataclass(frozen=True)
class RolloutGate:
    """A gate function registered by name (edgefleet.gates.Gate): `judge` reads the wave's
    evidence named in `needs`; `applies` says when the gate has anything to judge."""

    name: str
    needs: tuple[str, ...]
    judge: Callable[[WaveEvidence, Gates], GateVerdict]
    applies: Callable[[WaveEvidence, Gates], bool] = lambda ev, g: True

    def evaluate(self, evidence: WaveEvidence, params: Gates) -> GateVerdict | None:
        return self.judge(evidence, params) if self.applies(evidence, params) else None


def _outcomes(ev: WaveEvidence) -> Mapping[str, str]:
    return ev.outcomes if ev.outcomes is not None else {}


def _labelled(ev: WaveEvidence, g: Gates) -> bool:
    return ev.mode != "shadow" and g.min_labelled > 0   # labels come back for served predictions only


REGISTRY: GateRegistry[WaveEvidence, Gates] = GateRegistry("rollout", [
    RolloutGate("installs", ("outcomes",), lambda ev, g: gate_installs(_outcomes(ev), g)),
    RolloutGate("success", ("outcomes",), lambda ev, g: gate_success(_outcomes(ev), g)),
    RolloutGate("reporting", ("devices", "outcomes"), lambda ev, g: gate_reporting(ev.devices, _outcomes(ev), g)),
    RolloutGate("errors", ("candidate", "control"), lambda ev, g: gate_errors(ev.candidate, ev.control, g)),
    RolloutGate("latency_p99", ("candidate", "previous"), lambda ev, g: gate_latency(ev.candidate, ev.previous, g)),
    RolloutGate("prediction_drift", ("candidate", "control", "baseline"),
                lambda ev, g: gate_prediction_drift(ev.candidate, ev.control, ev.baseline, g)),
    RolloutGate("feature_drift", ("candidate", "control", "baseline"),
                lambda ev, g: gate_feature_drift(ev.candidate, ev.control, ev.baseline, g)),
    RolloutGate("shadow_agreement", ("candidate",), lambda ev, g: gate_shadow(ev.candidate, g),
                applies=lambda ev, g: ev.mode == "shadow"),
    RolloutGate("online_accuracy", ("candidate", "control", "baseline"),
                lambda ev, g: gate_online_accuracy(ev.candidate, ev.control, ev.baseline, g), applies=_labelled),
    RolloutGate("slice_gap", ("candidate", "baseline"), lambda ev, g: gate_slice_gap(ev.candidate, ev.baseline, g),
                applies=lambda ev, g: _labelled(ev, g) and g.max_slice_gap_increase < 1.0),
])


def evaluate_wave(ev: WaveEvidence, g: Gates) -> Verdict:
    """The wave's enabled gates, in registry order. The device outcomes come from the targets'
    status history (ev.outcomes) or, without one, from the devices' evidence. The verdict is
    fail as soon as any gate fails, pass only when every gate passes and every device is decided."""
    if ev.outcomes is None:
        ev = replace(ev, outcomes={d.device_id: device_outcome(d, g, ev.now) for d in ev.devices})
    outcomes = _outcomes(ev)
    enabled = set(g.enabled)
    results = REGISTRY.evaluate(ev, g, [n for n in REGISTRY.names() if n in enabled])
    status = overall(results)
    if status == PASS and any(o == PENDING for o in outcomes.values()):
        status = WAIT   # every device is decided (healthy, or failed by the timeout) before a wave passes
    return Verdict(status, results, dict(outcomes))
