"""The batch merge of telemetry payloads against a hand-computed result: exact integer sums,
floats folded in payload order, maxima, and every map's keys in first-seen order (a resource
key is placed where it was first seen, even when that reading was no number)."""

from __future__ import annotations

import json

import pytest

from fleet.ingest import aggregate


def _window(**kw):  # type: ignore[no-untyped-def]
    return {"requests": 10, "sampled": 10, "errors": {"runtime": 0}, "latency_us": {"buckets": {}, "sum_us": 0.0},
            **kw}


def test_batch_merge_sums_counts_and_orders_keys_as_first_seen() -> None:
    ps = [
        _window(errors={"runtime": 1}, latency_us={"buckets": {"9": 2, "3": 1}, "sum_us": 0.1},
                resources={"temp_c": None, "cpu": 5, "flag": True}),
        _window(errors={"oom": 2, "runtime": 3}, latency_us={"buckets": {"3": 4, "120": 2**62}, "sum_us": 0.2},
                resources={"cpu": 7.5, "temp_c": 40.0, "rss": "n/a"}, shadow={"compared": 4, "agreed": 3},
                dropped_windows=2),
        _window(requests=2**62, latency_us={"buckets": {"120": 2**62, "1": 1}}, resources=None, shadow=None),
        _window(resources={"temp_c": -1, "gpu": 0.5}, shadow={"compared": 1}, sampled=0),
    ]
    m = aggregate.merge_many(ps)
    assert (m["n_windows"], m["devices"], m["requests"], m["sampled"], m["dropped_windows"]) == (
        4, 4, 30 + 2**62, 30, 2)
    assert json.dumps(m["errors"]) == json.dumps({"runtime": 4, "oom": 2})
    assert json.dumps(m["latency_us"]["buckets"]) == json.dumps({"9": 2, "3": 5, "120": 2**63, "1": 1})
    assert m["latency_us"]["sum_us"] == (0.0 + 0.1) + 0.2
    # temp_c first (seen first, as None), then cpu; bools and strings are no readings
    assert json.dumps(m["resources_sum"]) == json.dumps({"temp_c": 39.0, "cpu": 12.5, "gpu": 0.5})
    assert json.dumps(m["resources_n"]) == json.dumps({"temp_c": 2, "cpu": 2, "gpu": 1})
    assert json.dumps(m["resources_max"]) == json.dumps({"temp_c": 40.0, "cpu": 7.5, "gpu": 0.5})
    assert m["shadow"] == {"compared": 5, "agreed": 3}
    # an aggregate among the payloads: its resource sums are added as they are, payload by payload
    agg = aggregate.merge_many([aggregate.merge_many(ps[:2]), *ps[2:]])
    assert (agg["n_windows"], agg["requests"], agg["latency_us"]["buckets"]) == (
        4, m["requests"], m["latency_us"]["buckets"])
    assert json.dumps(agg["resources_sum"]) == json.dumps({"temp_c": 39.0, "cpu": 12.5, "gpu": 0.5})


def test_aggregate_text_is_orjson_only_where_it_means_what_json_dumps_means() -> None:
    """The stored aggregate is written by orjson, except where orjson would write null for a
    non-finite float (json_dumps refuses it: the batch fails instead of storing a null that breaks
    every later merge of the key) or refuse an int beyond 64 bits (json_dumps writes it)."""
    from fleet.db import json_dumps
    from fleet.ingest.aggregate_store import _dumps

    m = aggregate.merge_many([_window(resources={"cpu": 1.5}), _window(latency_us={"buckets": {"4": 1}})])
    assert json.loads(_dumps(m)) == m and json.dumps(json.loads(_dumps(m))) == json.dumps(m)
    huge = {**m, "requests": 2**70}
    assert _dumps(huge) == json_dumps(huge)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            _dumps({**m, "latency_us": {**m["latency_us"], "sum_us": bad}})
