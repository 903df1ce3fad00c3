"""The one telemetry window type: the agent's windows round-trip through it unchanged, and a
bad shape is refused with one line naming the fault."""

import json

import pytest

from agent.window_payload import WindowPayload


def test_agent_windows_round_trip_through_the_type(agent_factory, bundles, digits) -> None:
    a = agent_factory("wp-1")
    a.install(bundles["v1"])
    a.telemetry.sample_budget = 1000
    for _ in range(20):
        a.predict(digits[0][:4])
    (p,) = a.flush_telemetry()
    p = json.loads(json.dumps(p))  # what ingest parses from the wire
    w = WindowPayload.from_wire(p)
    assert w.to_wire() == p
    assert w.model.version == 1 and w.requests == 20 and w.device == "wp-1"
    assert w.features and w.layout[0] == tuple(f["name"] for f in p["features"])
    assert w.prediction is not None and sum(w.prediction.counts) == p["sampled"] == w.n_samples


@pytest.mark.parametrize(("change", "fault"), [
    ({"schema": "x/v9"}, "unknown schema"),
    ({"requests": -1}, "'requests'"),
    ({"model": {"name": "m", "version": "1", "role": "active"}}, "model needs"),
    ({"features": [{"name": "f", "edges_hash": "h", "counts": [1, -2]}]}, "feature counts"),
    ({"features": [{"name": "f", "counts": [1.5]}]}, "non-negative integers"),
    ({"prediction": {"kind": "class", "n_classes": 3, "counts": [1, 2]}}, "n_classes"),
    ({"latency_us": None}, "'latency_us'"),
    ({"latency_us": {"buckets": {"500": 1}}}, "latency bucket index"),
    ({"latency_us": {"buckets": {"3": -1}}}, "latency bucket counts"),
])
def test_bad_shapes_are_one_clear_line(change: dict, fault: str) -> None:
    p = {"schema": "edgefleet.telemetry/v1", "fleet": "f", "device": "d", "seq": 1, "sent_at": 1.0,
         "window": {"start": 0.0, "end": 60.0, "seconds": 60.0},
         "model": {"name": "m", "version": 1, "role": "active", "manifest_sha256": "0" * 64},
         "device_class": "c", "requests": 3, "sampled": 3, "errors": {"invalid_input": 0, "runtime": 0},
         "latency_us": {"growth": 1.1, "min_us": 1.0, "buckets": {"3": 3}, "sum_us": 9.0}, "resources": {},
         "features": [], "prediction": None, "dropped_windows": 0}
    assert WindowPayload.from_wire(p).to_wire() == p
    with pytest.raises(ValueError, match=fault) as exc:
        WindowPayload.from_wire({**p, **change})
    assert str(exc.value).startswith("telemetry: ") and "\n" not in str(exc.value)
