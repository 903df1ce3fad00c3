"""The one telemetry window type: the agent's windows round-trip through it unchanged, and a
bad shape is refused with one line naming the fault."""

import json

import pytest

from agent.window_payload import OPTIONAL, WindowPayload


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
    ({"schema": "x/v9"}, r"Invalid enum value 'x/v9' - at `\$.schema`"),
    ({"requests": -1}, r"Expected `int` >= 0 - at `\$.requests`"),
    ({"model": {"name": "m", "version": "1", "role": "active"}}, r"Expected `int`, got `str` - at `\$.model.version`"),
    ({"model": {"name": "m", "version": 1, "role": "boss"}}, r"at `\$.model.role`"),
    ({"features": [{"name": "f", "edges_hash": "h", "counts": [1, -2]}]}, r"at `\$.features\[0\].counts\[1\]`"),
    ({"features": [{"name": "f", "counts": [1.5]}]}, r"Expected `int`, got `float`"),
    ({"features": [{"name": "f", "counts": [True]}]}, r"Expected `int`, got `bool`"),
    ({"sampled": 2**62 + 1}, r"<= 4611686018427387904 - at `\$.sampled`"),
    ({"prediction": {"kind": "class", "n_classes": 3, "counts": [1, 2]}}, "n_classes"),
    ({"latency_us": None}, r"got `null` - at `\$.latency_us`"),
    ({"latency_us": {"buckets": {"500": 1}}}, "latency bucket index"),
    ({"latency_us": {"buckets": {"3": -1}}}, r"at `\$.latency_us.buckets\[...\]`"),
    ({"window": {"start": True, "end": 1.0}}, r"at `\$.window.start`"),
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


def test_every_optional_block_is_in_the_schema_and_kept_by_ingests_decoder() -> None:
    """ingest's decoded dict holds only the keys the schema names: an optional block missing from
    it would vanish from aggregation (the stored text would still hold it)."""
    from agent.window_schema import _Wire, decode_wire

    assert set(OPTIONAL) <= _Wire.__optional_keys__
    p = {"schema": "edgefleet.telemetry/v1", "device": "d", "window": {"start": 0.0, "end": 1.0},
         "model": {"name": "m", "version": 1, "role": "shadow"}, "requests": 1, "errors": {}, "latency_us": {},
         "shadow": {"compared": 2, "agreed": 1, "active_version": 3}, "future_block": 1,
         **{k: {"x": [1, 2]} for k in OPTIONAL if k != "shadow"}}
    d, _ = decode_wire(json.dumps(p).encode())
    assert d == {k: v for k, v in p.items() if k != "future_block"}
