"""Telemetry aggregation details: sample budget, window hand-over between models."""

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
