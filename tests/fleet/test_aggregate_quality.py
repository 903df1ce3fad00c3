"""Issue 14: aggregates carry the field loop's blocks (confidence, labelled outcomes) merged
exactly, so online accuracy read from aggregates (Prometheus model health, console series)
equals online accuracy read from the devices' own windows. Blocks made by the agent's code."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fleet.ingest import aggregate

pytest.importorskip("fleet.analytics.quality", reason="the analytics engine (issue 14 items 4-5) is not here")


def _payload(truth: dict[str, tuple[int, int]], low: int, high: int) -> dict[str, Any]:
    from agent.confidence import ConfidenceStats, MonitorSpec
    from agent.outcomes import OutcomeWindow

    out = OutcomeWindow(MonitorSpec(n_classes=10, min_slice_count=1))
    for key, (n, ok) in truth.items():
        for i in range(n):
            out.add(("rid", 1, 3 if i < ok else 4, None, 8 if i % 2 else 9, key), 3)
    conf = ConfidenceStats()
    conf.add(np.full(high, 0.95), np.full(high, 0.9))
    conf.add(np.full(low, 0.3), np.full(low, 0.05))
    return {"requests": low + high, "confidence": conf.to_dict(), "outcomes": out.to_dict()}


def _summary(q: Any) -> tuple[Any, ...]:
    return (q.accuracy(), q.slices(), q.estimated_accuracy(), q.low_confidence_rate(), q.labelled)


def test_merged_aggregate_reads_like_the_windows_it_merged() -> None:
    from fleet.analytics.quality import merge_payloads

    a = _payload({"region=eu": (50, 45), "region=us": (40, 20)}, 10, 90)
    b = _payload({"region=eu": (30, 30), "_other": (5, 1)}, 30, 70)
    acc = aggregate.merge_into(aggregate.merge_into(aggregate.empty(), a), b)
    direct = merge_payloads([a, b])
    assert _summary(merge_payloads([acc])) == _summary(direct)
    assert direct.accuracy()["n"] == 125 and direct.accuracy()["correct"] == 96
    assert acc["confidence"]["low"] == 40 and sum(acc["confidence"]["counts"]) == 200
    # the ingest path (merge_many) and merging aggregates of aggregates agree too
    assert _summary(merge_payloads([aggregate.merge_many([a, b])])) == _summary(direct)
    twice = aggregate.merge_into(aggregate.merge_into(aggregate.empty(), acc), acc)
    assert merge_payloads([twice]).accuracy()["n"] == 250
    # the inputs are not changed by merging
    assert a["outcomes"]["slices"]["region=eu"]["n"] == 50
