"""Issue 15 item 5: drift that knows what matters. Telemetry comes from a real agent (its own
sketches, on the bundle's baseline edges); the baseline carries the build's importance. Drifting
features the model ignores fails neither the rollout gate nor the drift report (before: 12 of 32
features drifted = 37.5% >= the 30% gate share, a page); drifting the one feature that decides the
class fails both (before: 1 of 32 = 3%, passed)."""

from __future__ import annotations

from typing import Any

from agent.config import TelemetryConfig
from fleet.drift.engine import compare
from fleet.rollouts.gates import FAIL, PASS, CohortStats, gate_feature_drift
from fleet.rollouts.spec import Gates
from fleet.settings import DriftSettings
from tests.explain.tabular import HOT, eval_rows, tabular_bundle

IGNORED = list(range(10, 22))


def _telemetry(agent: Any, shift_cols: list[int]) -> list[dict[str, Any]]:
    x = eval_rows(2000, seed=5)
    x[:, shift_cols] += 3.0
    agent.telemetry.sample_budget = 10_000
    for i in range(0, len(x), 200):
        agent.predict({"x": x[i:i + 200]})
    return [p for p in agent.flush_telemetry() if p["model"]["name"] == "tab"]


def _cohort(payloads: list[dict[str, Any]]) -> CohortStats:
    feats: dict[str, dict[str, Any]] = {}
    for p in payloads:
        for f in p["features"]:
            cur = feats.setdefault(f["name"], {"edges_hash": f["edges_hash"], "counts": [0] * len(f["counts"])})
            cur["counts"] = [a + b for a, b in zip(cur["counts"], f["counts"], strict=True)]
    return CohortStats(requests=sum(p["requests"] for p in payloads), windows=1, devices=1, features=feats)


def test_ignored_drift_pages_nobody_important_drift_does(agent_factory, fleet_keys, tmp_path) -> None:
    bundle, fields = tabular_bundle(tmp_path / "tab-v1.bundle", fleet_keys["build"], rest=0.0)
    baseline = fields["drift_baseline"]
    assert baseline["importance"][f"f{HOT}"] > 0.9  # the build found the deciding feature
    agent = agent_factory("wd-1", telemetry=TelemetryConfig(sample_rate=1.0, max_samples_per_s=10_000))
    agent.install(bundle)
    gates, ds = Gates(), DriftSettings(min_samples=500)
    unweighted = {k: v for k, v in baseline.items() if k != "importance"}

    ignored = _telemetry(agent, IGNORED)
    assert sum(p["sampled"] for p in ignored) > 0
    g = gate_feature_drift(_cohort(ignored), CohortStats(), baseline, gates)
    assert g.status == PASS, g.detail
    assert set(g.detail["ignored"]) >= {f"f{i}" for i in IGNORED} and g.detail["count_share"] >= 0.3
    assert gate_feature_drift(_cohort(ignored), CohortStats(), unweighted, gates).status == FAIL  # the old page
    rep = compare(ignored, baseline, ds)
    assert rep.importance_weighted and rep.level == "ok" and not rep.dataset_drift, rep.to_dict(False)
    assert set(rep.ignored_drift) >= {f"f{i}" for i in IGNORED} and rep.drifted_count_share >= 0.3
    assert compare(ignored, unweighted, ds).level == "warn"

    important = _telemetry(agent, [HOT])
    g = gate_feature_drift(_cohort(important), CohortStats(), baseline, gates)
    assert g.status == FAIL and g.detail["drifted"] == [f"f{HOT}"] and g.detail["share"] > 0.9, g.detail
    assert gate_feature_drift(_cohort(important), CohortStats(), unweighted, gates).status == PASS  # missed before
    rep = compare(important, baseline, ds)
    assert rep.level == "alert" and rep.dataset_drift and rep.drifted_share > 0.9
