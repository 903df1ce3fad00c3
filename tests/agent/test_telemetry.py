"""Telemetry aggregation details: sample budget, window hand-over between models."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import TelemetryConfig


def test_sample_budget_caps_sampling(agent_factory, bundles, digits) -> None:
    a = agent_factory("budget-1", telemetry=TelemetryConfig(sample_rate=1.0, max_samples_per_s=5))
    a.install(bundles["v1"])
    a.telemetry.sample_budget = 5  # a fresh second
    for _ in range(30):
        a.predict(digits[0][:1])
    p = a.flush_telemetry()[0]
    assert p["requests"] == 30 and 1 <= p["sampled"] <= 10  # at most 5 per second (a refill may fall inside)
    assert sum(p["prediction"]["counts"]) == p["sampled"]


def test_swap_reports_both_versions_once(agent_factory, bundles, digits) -> None:
    a = agent_factory("handover-1")
    a.install(bundles["v1"])
    for _ in range(3):
        a.predict(digits[0][:1])
    a.install(bundles["v2"])
    for _ in range(4):
        a.predict(digits[0][:1])
    first = {p["model"]["version"]: p["requests"] for p in a.flush_telemetry()}
    assert first == {1: 3, 2: 4}  # the retired model's partial window is reported once
    second = {p["model"]["version"]: p["requests"] for p in a.flush_telemetry()}
    assert second == {2: 0}
    a.lifecycle.rollback_to_previous("test")
    a.predict(digits[0][:1])
    third = {p["model"]["version"]: p["requests"] for p in a.flush_telemetry()}
    assert third == {1: 1, 2: 0}


def test_candidate_survives_restart(config_factory, bundles, digits) -> None:
    from agent.daemon import Agent

    cfg = config_factory("cand-1")
    a = Agent(cfg).start()
    a.install(bundles["v1"])
    a.lifecycle.set_candidate(bundles["v2"], "ab", 0.25)
    a.stop()
    b = Agent(cfg).start()
    try:
        cand = b.predictor.candidate
        assert cand is not None and (cand.mode, cand.fraction, cand.model.version) == ("ab", 0.25, 2)
        assert b.status()["candidate"] == {"version": 2, "mode": "ab", "fraction": 0.25}
        b.lifecycle.stop_candidate()
    finally:
        b.stop()
    c = Agent(cfg).start()
    try:
        assert c.predictor.candidate is None
    finally:
        c.stop()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 12), st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_column_histograms_count_exactly_like_one_histogram_per_feature(n: int, feats: int, k: int,
                                                                       seed: int) -> None:
    """The one-pass batch path gives the per-feature counts, NaN and inf included, values on edges too."""
    from agent.sketches import ColumnHistograms, FixedBinHistogram

    rng = np.random.default_rng(seed)
    edges = [sorted(rng.normal(size=k).round(1).tolist()) for _ in range(feats)]
    cols = rng.normal(size=(n, feats)).round(1)  # rounding puts some values exactly on edges
    cols[rng.random((n, feats)) < 0.1] = np.nan
    cols[rng.random((n, feats)) < 0.05] = np.inf
    one = [FixedBinHistogram(e) for e in edges]
    for h, c in zip(one, cols.T, strict=True):
        h.add(c)
    batch = [FixedBinHistogram(e) for e in edges]
    ColumnHistograms(edges).add(batch, cols)
    for a, b in zip(one, batch, strict=True):
        assert a.counts.tolist() == b.counts.tolist() and a.nan == b.nan


def test_column_histograms_fall_back_for_uneven_bins() -> None:
    from agent.sketches import ColumnHistograms, FixedBinHistogram

    edges = [[0.0, 1.0], [0.0, 1.0, 2.0]]
    hs = [FixedBinHistogram(e) for e in edges]
    ColumnHistograms(edges).add(hs, np.array([[0.5, 1.5], [2.0, np.nan]]))
    assert hs[0].counts.tolist() == [0, 1, 1] and hs[1].counts.tolist() == [0, 0, 1, 0] and hs[1].nan == 1
