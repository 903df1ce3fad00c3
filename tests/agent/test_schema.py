"""Messages the agent produces validate against docs/telemetry.schema.json (any MQTT consumer
can rely on it) and against agent.protocol's checks."""

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from agent import wire
from agent.keys import Keyring, verify_document
from agent.protocol import validate_telemetry

jsonschema = pytest.importorskip("jsonschema")
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "telemetry.schema.json").read_text())


def _validator(ref: str):
    schema = {**SCHEMA, "$ref": f"#/$defs/{ref}"}
    return jsonschema.Draft202012Validator(schema)


def test_agent_messages_match_the_schema(agent_factory, bundles, bundle_server, digits) -> None:
    a = agent_factory("schema-1")
    a.install(bundles["v1"])
    a.lifecycle.set_candidate(bundles["v2"], "shadow", 1.0)
    for i in range(5):
        a.predict(digits[0][i:i + 3])
    a.flush_telemetry()
    ring = Keyring.from_public_keys([a.device_key.public_key()])
    msgs = [json.loads(m.payload) for m in a.outbox.pending(0, 100)]
    tel = [m for m in msgs if m["payload"].get("schema") == "edgefleet.telemetry/v1"]
    ev = [m for m in msgs if m["payload"].get("schema") == "edgefleet.event/v1"]
    assert {t["payload"]["model"]["role"] for t in tel} == {"active", "shadow"} and ev
    for t in tel:
        _validator("telemetryEnvelope").validate(t)
        validate_telemetry(verify_document(t, ring))
    for e in ev:
        _validator("eventEnvelope").validate(e)
    state = json.loads(a._signed({**a._state_payload(), "seq": a.outbox.next_seq()}))
    _validator("stateEnvelope").validate(state)
    _validator("stateEnvelope").validate({"status": "offline"})
    bad = json.loads(json.dumps(tel[0]))
    bad["payload"]["requests"] = -1
    with pytest.raises(jsonschema.ValidationError):
        _validator("telemetryEnvelope").validate(bad)


_dtypes = st.sampled_from([np.float32, np.float64, np.int8, np.uint8, np.int32, np.int64, np.bool_])


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text("abcxyz_", min_size=1, max_size=8),
                       _dtypes.flatmap(lambda dt: arrays(dt, array_shapes(min_dims=0, max_dims=4, max_side=5))),
                       max_size=4))
def test_wire_round_trips_any_arrays(arrs) -> None:
    out, _ = wire.decode(wire.encode(arrs))
    assert list(out) == list(arrs)
    for k, v in arrs.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape
        np.testing.assert_array_equal(out[k], v)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_wire_decode_never_crashes_on_garbage(data) -> None:
    try:
        wire.decode(b"EFT1" + data)
    except wire.WireError:
        pass
