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
