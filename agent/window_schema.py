"""The telemetry window's wire shape, declared once as msgspec types (docs/telemetry.schema.json).

Two doors, one schema: `check_wire(dict)` (the agent's own windows, `WindowPayload.from_wire`, any
payload ingest had to decode as a whole) and `decode_wire(bytes)` (ingest's hot path: the signed
payload bytes decoded and checked in one pass in C, about three times cheaper than decoding and
then walking the dict in Python). Both then apply the few rules no type states (a class
prediction's n_classes, latency bucket indexes, seq when required) and return what aggregation
reads. Every count aggregation adds up is an integer in [0, 2^62]: sums of millions of windows stay
exact in 64 bits.

The decoded dict holds the keys the schema names (every key agents send); others are left out of
it (the stored text, which is what was signed, keeps them).
"""

from itertools import chain
from operator import itemgetter
from typing import Annotated, Any, Literal, NamedTuple, NotRequired, TypedDict

import msgspec

from agent.protocol import MAX_MESSAGE_BYTES, MODEL_ROLES, TELEMETRY_SCHEMA, decode
from agent.sketches import LATENCY_BUCKETS

MAX_COUNT = 2**62
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
Layout = tuple[tuple[str, ...], tuple[str | None, ...], tuple[int, ...]]
# Optional wire blocks kept as they came (docs/telemetry.md): the fleet reads them by key.
OPTIONAL = ("samples_dropped", "shadow", "raw_samples", "data_quality", "confidence", "slices",
            "prediction_records", "outcomes")


class _Window(TypedDict):
    start: float
    end: float
    seconds: NotRequired[Any]


class _Model(TypedDict):
    name: str
    version: int
    role: Literal[MODEL_ROLES]  # type: ignore[valid-type]
    manifest_sha256: NotRequired[Any]


class _Latency(TypedDict):
    buckets: NotRequired[dict[str, Count]]  # sparse {log bucket index: count}; indexes checked below
    growth: NotRequired[Any]
    min_us: NotRequired[Any]
    sum_us: NotRequired[Any]


class _Feature(TypedDict):
    name: str
    counts: list[Count]
    edges_hash: NotRequired[Any]
    nan: NotRequired[Count]


class _Prediction(TypedDict):
    kind: Literal["class", "value"]
    counts: list[Count]
    n_classes: NotRequired[Any]  # a class prediction's: checked against the counts below
    edges_hash: NotRequired[Any]
    nan: NotRequired[Count]


class _Shadow(TypedDict):
    compared: NotRequired[Count]
    agreed: NotRequired[Count]
    active_version: NotRequired[Any]


class _Wire(TypedDict):
    schema: Literal[TELEMETRY_SCHEMA]  # type: ignore[valid-type]
    device: str
    window: _Window
    model: _Model
    requests: Count
    errors: dict[str, Count]
    latency_us: _Latency
    fleet: NotRequired[Any]
    device_class: NotRequired[Any]
    sampled: NotRequired[Count]
    resources: NotRequired[dict[str, Any] | None]
    features: NotRequired[list[_Feature]]
    prediction: NotRequired[_Prediction | None]
    dropped_windows: NotRequired[Count]
    seq: NotRequired[Count]
    sent_at: NotRequired[Any]
    shadow: NotRequired[_Shadow | None]
    # the other OPTIONAL blocks, kept as they came (tests/agent/test_window_payload.py: all declared)
    samples_dropped: NotRequired[Any]
    raw_samples: NotRequired[Any]
    data_quality: NotRequired[Any]
    confidence: NotRequired[Any]
    slices: NotRequired[Any]
    prediction_records: NotRequired[Any]
    outcomes: NotRequired[Any]


_DECODER: msgspec.json.Decoder[Any] = msgspec.json.Decoder(_Wire)


class WireCounts(NamedTuple):
    """What aggregation reads of a checked window: the features' layout, their counts one after
    the other, and their nan counts."""

    layout: Layout
    counts: list[int]
    nan: list[int]


def _fail(what: str) -> ValueError:
    return ValueError(f"telemetry: {what}")


def check_wire(d: Any, *, require_seq: bool = False) -> WireCounts:
    """The shape check of a telemetry payload already decoded; ValueError("telemetry: ...")."""
    if not isinstance(d, dict):
        raise _fail("payload must be a JSON object")
    try:
        msgspec.convert(d, _Wire)
    except msgspec.ValidationError as exc:
        raise _fail(str(exc)) from None
    return _rules(d, require_seq)


def decode_wire(raw: bytes, *, require_seq: bool = False) -> tuple[dict[str, Any], WireCounts]:
    """A telemetry payload decoded from JSON bytes and checked in one pass; ValueError("telemetry: ...")
    for a bad shape, agent.protocol.ProtocolError for bytes that are no JSON object. JSON that only
    the standard library reads (NaN, Infinity, huge exponents) is decoded by it, then checked alike."""
    try:
        if len(raw) > MAX_MESSAGE_BYTES:
            raise msgspec.DecodeError  # agent.protocol.decode refuses it, with its reason
        d = _DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        raise _fail(str(exc)) from None
    except msgspec.DecodeError:
        d = decode(raw)  # agent.protocol.decode: its size limit and errors
        return d, check_wire(d, require_seq=require_seq)
    return d, _rules(d, require_seq)


_NAME, _COUNTS = itemgetter("name"), itemgetter("counts")
_BUCKET_KEYS = frozenset(map(str, range(LATENCY_BUCKETS)))


def _rules(d: dict[str, Any], require_seq: bool) -> WireCounts:
    """What the types cannot say, on a payload that passed them; returns the aggregation view."""
    if require_seq and "seq" not in d:
        raise _fail("Object missing required field `seq`")
    pred = d.get("prediction")
    if pred and pred["kind"] == "class" and (type(pred.get("n_classes")) is not int
                                             or pred["n_classes"] != len(pred["counts"])):
        raise _fail("class prediction needs n_classes equal to the number of counts")
    buckets = d["latency_us"].get("buckets") or {}
    if not _BUCKET_KEYS.issuperset(buckets):  # what agents send: one hashed pass instead of parsing each key
        keys = list(buckets)
        if not all(map(str.isdecimal, keys)) or max(map(int, keys)) >= LATENCY_BUCKETS:
            raise _fail("latency bucket index out of range")
    feats = d.get("features") or ()
    counts = list(map(_COUNTS, feats))
    # list comprehensions for the optional keys: half the cost of map(methodcaller(...)) here
    return WireCounts((tuple(map(_NAME, feats)), tuple([f.get("edges_hash") for f in feats]), tuple(map(len, counts))),
                      list(chain.from_iterable(counts)), [f.get("nan", 0) for f in feats])
