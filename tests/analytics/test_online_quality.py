"""Fleet analytics on telemetry made by the agent's own code (issue 14 items 4-5): online accuracy
within its Wilson interval of the truth, a concept-drift version failing the online_accuracy gate,
a slice gap, the label-free estimate."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from agent.config import TelemetryConfig
from fleet.analytics import FAIL, PASS, WAIT, concept_drift, low_confidence_spike, merge_payloads, slice_gap
from fleet.rollouts.gates import CohortStats, gate_online_accuracy, gate_slice_gap
from fleet.rollouts.spec import Gates

pytestmark = pytest.mark.slow


def _serve(agent: Any, x: np.ndarray, y: np.ndarray, *, label_share: float, flip: float, seed: int,
           region: Any = None) -> tuple[list[dict[str, Any]], float]:
    """Predict every row, send labels for `label_share` of them (a `flip` share of the world's
    labels changed: concept drift); returns the telemetry payloads and the true accuracy over all
    predictions against the labels the world has now."""
    rng = np.random.default_rng(seed)
    world = np.where(rng.random(len(y)) < flip, (y + 1) % 10, y)
    right = 0
    for i in range(len(x)):
        meta = {"region": region(i)} if region else None
        r = agent.predict(x[i:i + 1], meta)
        pred = int(np.argmax(r["logits"]))
        right += int(pred == world[i])
        if rng.random() < label_share:
            agent.feedback(r.request_id, int(world[i]))
    return agent.flush_telemetry(), right / len(x)


def _cohort(payloads: list[dict[str, Any]]) -> CohortStats:
    return CohortStats(quality=merge_payloads(payloads))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    from tests.agent import models

    x, y = models.digits_data()
    return x.astype(np.float32), y


def test_accuracy_matches_truth_and_drift_is_caught(agent_factory, bundles, data) -> None:
    x, y = data
    tel = TelemetryConfig(sample_rate=1.0, max_samples_per_s=100000)
    control = agent_factory("ctl-1", telemetry=tel)
    control.install(bundles["v1"])
    cand = agent_factory("cand-1", telemetry=tel)
    cand.install(bundles["v1"])
    ctl_payloads, ctl_truth = _serve(control, x[:700], y[:700], label_share=0.6, flip=0.0, seed=1)
    cand_payloads, cand_truth = _serve(cand, x[700:1400], y[700:1400], label_share=0.6, flip=0.3, seed=2)

    q = merge_payloads(ctl_payloads)
    acc = q.accuracy()
    assert acc is not None and 300 < acc["n"] < 560
    assert acc["low"] <= ctl_truth <= acc["high"]     # the fleet's number covers the truth
    qc = merge_payloads(cand_payloads)
    assert qc.accuracy()["low"] <= cand_truth <= qc.accuracy()["high"]
    assert qc.accuracy()["value"] < acc["value"] - 0.15

    # label-free estimate from confidence: produced, marked, and close for the honest version
    est = merge_payloads(ctl_payloads).estimated_accuracy()
    assert est is not None and est["estimate"] is True and est["predictions"] == 700
    assert abs(est["value"] - ctl_truth) < 0.1

    g = Gates(min_labelled=200, max_accuracy_drop=0.02)
    bad = gate_online_accuracy(_cohort(cand_payloads), _cohort(ctl_payloads), None, g)
    assert bad.status == FAIL and bad.detail["against"] == "control" and bad.detail["p_value"] < 0.05
    # the measured value is in the threshold's unit: the drop below control, not the accuracy itself
    assert bad.value == round(bad.detail["reference"] - bad.detail["accuracy"]["value"], 6) > g.max_accuracy_drop
    ok = gate_online_accuracy(_cohort(ctl_payloads), _cohort(cand_payloads), None, g)
    assert ok.status == PASS
    few = gate_online_accuracy(_cohort(cand_payloads), _cohort(ctl_payloads), None, Gates(min_labelled=5000))
    assert few.status == WAIT
    # without control labels: the build-time eval from the manifest is the reference
    build = {"build_metrics": {"task": "classification", "metric_name": "accuracy", "metric": 0.97}}
    assert gate_online_accuracy(_cohort(cand_payloads), CohortStats(), build, g).status == FAIL
    assert concept_drift(q, reference=0.97, min_labelled=200).status in (PASS, FAIL)  # judged, not waiting


def test_slice_gap_and_low_confidence(agent_factory, bundles, data) -> None:
    x, y = data
    a = agent_factory("slice-1", telemetry=TelemetryConfig(sample_rate=1.0, max_samples_per_s=100000))
    a.install(bundles["v1"])
    from agent.confidence import MonitorSpec, Slicer

    m = a.predictor.active
    m.monitor = m.sketcher.monitor = MonitorSpec(n_classes=10, metadata_keys=("region",), min_slice_count=20)
    m.slicer = Slicer(m.monitor)
    a.outcomes.specs[1] = m.monitor
    # region "us" lives in a changed world (half its labels moved): a fairness gap appears online
    payloads: list[dict[str, Any]] = []
    rng = np.random.default_rng(5)
    for i in range(800):
        region = "eu" if i % 2 else "us"
        r = a.predict(x[i:i + 1], {"region": region})
        label = int(y[i]) if region == "eu" or rng.random() < 0.5 else (int(y[i]) + 3) % 10
        a.feedback(r.request_id, label)
    payloads = a.flush_telemetry()
    q = merge_payloads(payloads)
    assert set(q.slices()) == {"region=eu", "region=us"}
    v = slice_gap(q, build_gap=0.02, max_increase=0.05)
    assert v.status == FAIL and v.detail["worst"] == "region=us" and v.value > 0.3
    gate = gate_slice_gap(_cohort(payloads), {"build_metrics": {"slice_gap": 0.02}},
                          Gates(min_labelled=100, max_slice_gap_increase=0.05))
    assert gate.status == FAIL
    assert payloads[0]["slices"] == {"region=eu": 400, "region=us": 400}

    # low-confidence spike: faint inputs (a dead camera, say) make the model unsure
    noisy, _ = _serve(a, np.random.default_rng(0).normal(0, 0.3, size=(400, 64)).astype(np.float32),
                      y[:400], label_share=0.0, flip=0.0, seed=3)
    spike = low_confidence_spike(merge_payloads(noisy), q, max_increase=0.05)
    calm = low_confidence_spike(q, q, max_increase=0.05)
    assert calm.status == PASS
    assert spike.status == FAIL, spike.to_dict()


def test_wave_verdict_stops_a_concept_drift_candidate(agent_factory, bundles, data) -> None:
    """The rollout evaluator's own path: stored windows -> merge_windows -> evaluate_wave."""
    from fleet.models import TelemetryWindow
    from fleet.rollouts.evidence import merge_windows
    from fleet.rollouts.gates import DeviceEvidence, WaveEvidence, evaluate_wave

    x, y = data
    tel = TelemetryConfig(sample_rate=1.0, max_samples_per_s=100000)
    ctl, cand = agent_factory("w-ctl", telemetry=tel), agent_factory("w-cand", telemetry=tel)
    ctl.install(bundles["v1"])
    cand.install(bundles["v2"])
    ctl_p, _ = _serve(ctl, x[:500], y[:500], label_share=0.8, flip=0.0, seed=11)
    cand_p, _ = _serve(cand, x[500:1000], y[500:1000], label_share=0.8, flip=0.3, seed=12)

    def windows(ps: list[dict[str, Any]], dev: str) -> list[TelemetryWindow]:
        return [TelemetryWindow(device_id=dev, seq=i + 1, window_start=0.0, window_end=1.0, model_name="digits",
                                model_version=p["model"]["version"], device_class=p["device_class"],
                                requests=p["requests"], errors=0, payload=p) for i, p in enumerate(ps)]

    gates = Gates(min_labelled=200, min_requests=10, min_drift_samples=10**9, report_timeout_s=60)
    dev = [DeviceEvidence("w-cand", "x86-64-generic", commanded_at=0.0, installed=True, installed_at=0.0, windows=3)]
    ev = WaveEvidence(now=1.0, mode="install", devices=dev, candidate=merge_windows(windows(cand_p, "w-cand")),
                      control=merge_windows(windows(ctl_p, "w-ctl")), previous=merge_windows([]))
    verdict = evaluate_wave(ev, gates)
    by_gate = {r.gate: r.status for r in verdict.results}
    assert by_gate["online_accuracy"] == FAIL and verdict.status == FAIL
    honest = WaveEvidence(now=1.0, mode="install", devices=dev, candidate=merge_windows(windows(ctl_p, "w-cand")),
                          control=merge_windows(windows(ctl_p, "w-ctl")), previous=merge_windows([]))
    assert {r.gate: r.status for r in evaluate_wave(honest, gates).results}["online_accuracy"] == PASS
    assert "online_accuracy" not in {r.gate for r in evaluate_wave(ev, Gates(min_requests=10)).results}
