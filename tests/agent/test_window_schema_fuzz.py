"""One schema, two doors: whatever a device sends, ingest's one-pass decode (decode_wire on the
bytes) decides exactly as the check of the decoded dict (check_wire, the agent's and from_wire's),
never with anything but a clean refusal."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.protocol import ProtocolError
from agent.window_schema import check_wire, decode_wire
from fleet.devsim import SimDevice, make_baseline

BASE = dict(SimDevice("fz").telemetry(np.random.default_rng(0), make_baseline(seed=1, n_features=3), n=50),
            seq=3, shadow={"compared": 4, "agreed": 3}, confidence={"counts": [1, 2]})

_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                     st.sampled_from([0, 1, 2**62, 2**62 + 1, 2**63, 2**64, -1]),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
                     st.sampled_from(["active", "class", "value", "193", "194", "\u0663", "edgefleet.telemetry/v1"]))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                          st.dictionaries(st.text(max_size=3), inner, max_size=3)),
                       max_leaves=6)


def _paths(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [at]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*at, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*at, i))
    return out


PATHS = _paths(BASE)[1:]


def _mutated(path: tuple[Any, ...], value: Any, delete: bool) -> dict[str, Any]:
    doc = json.loads(json.dumps(BASE))
    node = doc
    for k in path[:-1]:
        node = node[k]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


def _outcome(fn: Any, arg: Any) -> tuple[str, Any]:
    """("ok", the aggregation view) or ("refused", None); a refusal is one line."""
    try:
        got = fn(arg, require_seq=True)
    except (ValueError, ProtocolError) as exc:
        assert "\n" not in str(exc)
        return ("refused", None)
    return ("ok", got[1] if fn is decode_wire else got)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=_values, delete=st.booleans(),
       extra=st.dictionaries(st.text(max_size=4), _values, max_size=2))
def test_decoding_the_bytes_decides_as_checking_the_dict(path, value, delete, extra) -> None:  # type: ignore[no-untyped-def]
    doc = {**_mutated(path, value, delete and isinstance(path[-1], str)), **extra}
    raw = json.dumps(doc).encode()  # NaN and Infinity too: the standard library writes them
    on_bytes = _outcome(decode_wire, raw)
    on_dict = _outcome(check_wire, json.loads(raw))
    assert on_bytes == on_dict, (path, value, delete, extra)


def test_the_unmutated_window_passes_both_doors() -> None:
    raw = json.dumps(BASE).encode()
    assert _outcome(decode_wire, raw) == _outcome(check_wire, BASE)
    assert _outcome(check_wire, BASE)[0] == "ok"
    assert _outcome(check_wire, {**BASE, "requests": -1})[0] == "refused"
