"""The one telemetry window type: what an agent reports per (window, model role) and what the
fleet's ingest, aggregation, drift and every simulator read. docs/telemetry.schema.json is its
wire form (`to_wire()`); `from_wire(dict)` is the one shape check, cheap enough for ingest.

    payload = WindowPayload.from_wire(doc)   # ValueError("telemetry: ...") on a bad shape
    payload.features[0].counts, payload.layout, payload.to_wire()

Building a window from agent histograms (`build_window`) is shared by agent.telemetry and the
simulators, so tests feed the fleet exactly what a device would send.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from operator import itemgetter, methodcaller
from typing import Any

from agent.protocol import MODEL_ROLES, TELEMETRY_SCHEMA
from agent.sketches import LATENCY_BUCKETS, CategoricalHistogram, FixedBinHistogram, LatencyHistogram

MAX_COUNT = 2**62
# Optional wire blocks kept as they came (docs/telemetry.md): the fleet reads them by key.
OPTIONAL = ("samples_dropped", "shadow", "raw_samples", "data_quality", "confidence", "slices",
            "prediction_records", "outcomes")
Layout = tuple[tuple[str, ...], tuple[str | None, ...], tuple[int, ...]]


def _fail(what: str) -> ValueError:
    return ValueError(f"telemetry: {what}")


def check_counts(v: Any, what: str) -> list[int]:
    """A list of ints (not bools), none negative, none over MAX_COUNT. On ingest's hot path for
    every window, so every pass runs in C: the items' types counted by identity (cheaper than a
    set of them), an unsigned 64-bit array refuses negatives and anything larger, and when the
    sum is at most MAX_COUNT so is every item (max() runs only when it is not)."""
    if not isinstance(v, list) or (v and list(map(type, v)).count(int) != len(v)):
        raise _fail(f"{what} must be a list of non-negative integers")
    try:
        array("Q", v)
    except OverflowError:
        raise _fail(f"{what} must be a list of non-negative integers") from None
    if sum(v) > MAX_COUNT and max(v) > MAX_COUNT:
        raise _fail(f"{what} must be a list of non-negative integers")
    return v


@dataclass(slots=True)
class FeatureCounts:
    """One input feature's counts on the baseline's fixed edges (len(edges) + 1 bins)."""

    name: str
    edges_hash: str | None
    counts: list[int]
    nan: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "edges_hash": self.edges_hash, "counts": self.counts, "nan": self.nan}


@dataclass(frozen=True, slots=True)
class PredictionCounts:
    """Class counts (kind "class", n_classes) or counts on the baseline's value edges (kind "value")."""

    kind: str
    counts: list[int]
    n_classes: int | None = None
    edges_hash: str | None = None
    nan: int = 0

    def to_wire(self) -> dict[str, Any]:
        if self.kind == "class":
            d: dict[str, Any] = {"kind": "class", "n_classes": self.n_classes, "counts": self.counts}
            if self.nan:
                d["nan"] = self.nan
            return d
        return {"kind": self.kind, "edges_hash": self.edges_hash, "counts": self.counts, "nan": self.nan}

    @property
    def layout(self) -> tuple[str | None, str | None, int]:
        return self.kind, self.edges_hash, len(self.counts)


@dataclass(frozen=True, slots=True)
class ModelRef:
    name: str
    version: int
    role: str
    manifest_sha256: str


@dataclass(slots=True)
class WindowPayload:
    """One telemetry window of one model role on one device (docs/telemetry.md)."""

    fleet: str
    device: str
    device_class: str
    model: ModelRef
    start: float
    end: float
    seconds: float
    requests: int
    sampled: int
    errors: dict[str, int]
    latency_us: dict[str, Any]            # LatencyHistogram.to_dict(): sparse buckets, mergeable by adding
    resources: dict[str, Any]
    features: list[FeatureCounts] = field(default_factory=list)
    prediction: PredictionCounts | None = None
    dropped_windows: int = 0
    seq: int | None = None                # set by the outbox when the window is stored for sending
    sent_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)   # OPTIONAL blocks (and unknown keys, kept)

    @property
    def layout(self) -> Layout:
        """Feature names, edge hashes and bin counts: windows add up only when these are equal."""
        return layout_of(self.features)

    @property
    def n_samples(self) -> int:
        if self.features:
            return sum(self.features[0].counts)
        return sum(self.prediction.counts) if self.prediction else 0

    def to_wire(self) -> dict[str, Any]:
        """The JSON payload of docs/telemetry.schema.json (what is signed and published)."""
        d: dict[str, Any] = {
            "schema": TELEMETRY_SCHEMA, "fleet": self.fleet, "device": self.device,
            "window": {"start": self.start, "end": self.end, "seconds": self.seconds},
            "model": {"name": self.model.name, "version": self.model.version, "role": self.model.role,
                      "manifest_sha256": self.model.manifest_sha256},
            "device_class": self.device_class, "requests": self.requests, "sampled": self.sampled,
            "errors": self.errors, "latency_us": self.latency_us, "resources": self.resources,
            "features": [f.to_wire() for f in self.features],
            "prediction": None if self.prediction is None else self.prediction.to_wire(),
            "dropped_windows": self.dropped_windows,
        }
        if self.seq is not None:
            d["seq"] = self.seq
        if self.sent_at is not None:
            d["sent_at"] = self.sent_at
        d.update(self.extra)
        return d

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> WindowPayload:
        """Parse and shape-check a telemetry payload; ValueError("telemetry: ...") names the fault."""
        return from_wire(d)


def layout_of(features: Sequence[FeatureCounts] | Sequence[Mapping[str, Any]]) -> Layout:
    """The merge key of a feature list, typed or wire form (the one place layouts are compared)."""
    if features and isinstance(features[0], FeatureCounts):
        fs: Sequence[FeatureCounts] = features  # type: ignore[assignment]
        return (tuple(f.name for f in fs), tuple(f.edges_hash for f in fs), tuple(len(f.counts) for f in fs))
    ws: Sequence[Mapping[str, Any]] = features  # type: ignore[assignment]
    # list comprehensions (the fastest form measured): drift reads call this for thousands of payloads
    return (tuple([f["name"] for f in ws]), tuple([f.get("edges_hash") for f in ws]),
            tuple([len(f["counts"]) for f in ws]))


_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "device": str, "window": dict, "model": dict, "requests": int, "errors": dict,
    "latency_us": dict}
_KNOWN = frozenset(("schema", "fleet", "device", "device_class", "window", "model", "requests", "sampled",
                    "errors", "latency_us", "resources", "features", "prediction", "dropped_windows", "seq",
                    "sent_at"))


def _int(v: Any, what: str) -> int:
    if type(v) is not int or not 0 <= v <= MAX_COUNT:
        raise _fail(f"'{what}' must be a non-negative integer")
    return v


def _check_model(m: Mapping[str, Any]) -> None:
    if not isinstance(m.get("name"), str) or type(m.get("version")) is not int or m.get("role") not in MODEL_ROLES:
        raise _fail("model needs a name, an integer version and a role in " + "/".join(MODEL_ROLES))


def _model(m: Mapping[str, Any]) -> ModelRef:
    _check_model(m)
    return ModelRef(m["name"], m["version"], m["role"], str(m.get("manifest_sha256") or ""))


_NAME, _COUNTS, _HASH, _NAN = itemgetter("name"), itemgetter("counts"), methodcaller("get", "edges_hash"), \
    methodcaller("get", "nan", 0)


def _feature_counts(raw: Any) -> tuple[Layout, list[list[int]], list[int], list[int]]:
    """Every feature's counts checked in one flattened pass (ingest parses thousands a second):
    the layout, each feature's counts, all counts one after the other, and the nan counts."""
    if not isinstance(raw, list) or not all(map(isinstance, raw, repeat(dict))):
        raise _fail("features must be a list of objects")
    try:
        names, counts = tuple(map(_NAME, raw)), list(map(_COUNTS, raw))
    except KeyError as exc:
        raise _fail(f"a feature lacks {exc}") from None
    if set(map(type, names)) - {str} or set(map(type, counts)) - {list}:
        raise _fail("feature names must be strings and counts lists")
    flat = check_counts(list(chain.from_iterable(counts)), "feature counts")
    nan = check_counts(list(map(_NAN, raw)), "feature nan")
    return (names, tuple(map(_HASH, raw)), tuple(map(len, counts))), counts, flat, nan


_BUCKET_KEYS = frozenset(map(str, range(LATENCY_BUCKETS)))


def _latency(lat: dict[str, Any]) -> dict[str, Any]:
    """Sparse log buckets {index: count} (agent.sketches.LatencyHistogram), added up by aggregation."""
    buckets = lat.get("buckets", {})
    if not isinstance(buckets, dict):
        raise _fail("latency buckets must map bucket indexes to counts")
    check_counts(list(buckets.values()), "latency bucket counts")
    if _BUCKET_KEYS.issuperset(buckets):  # what agents send: one hashed pass instead of parsing each key
        return lat
    keys = list(map(str, buckets))
    if not all(map(str.isdigit, keys)) or (keys and max(map(int, keys)) >= LATENCY_BUCKETS):
        raise _fail("latency bucket index out of range")
    return lat


def _check_prediction(p: Any) -> list[int] | None:
    """The prediction's counts once checked (None: no prediction)."""
    if p is None:
        return None
    if not isinstance(p, dict) or p.get("kind") not in ("class", "value"):
        raise _fail("prediction must be null or an object of kind class or value")
    counts = check_counts(p.get("counts"), "prediction counts")
    n_classes = p.get("n_classes")
    if p["kind"] == "class" and (type(n_classes) is not int or n_classes != len(counts)):
        raise _fail("class prediction needs n_classes equal to the number of counts")
    _int(p.get("nan", 0), "nan")
    return counts


def _prediction(p: Any) -> PredictionCounts | None:
    counts = _check_prediction(p)
    if counts is None:
        return None
    return PredictionCounts(p["kind"], counts, p.get("n_classes"), p.get("edges_hash"), p.get("nan", 0))


def check_wire(d: Any, *, require_seq: bool = False) -> tuple[Layout, list[int], list[int]]:
    """The one shape check of a telemetry payload, down to every count aggregation adds up (the
    agent's own windows, ingest on every message, from_wire). Returns what aggregation reads: the
    features' layout, their counts one after the other, and their nan counts. ValueError("telemetry: ...")."""
    if not (isinstance(d, dict) or isinstance(d, Mapping)):  # the ABC check costs more; JSON gives dicts
        raise _fail("payload must be a JSON object")
    if d.get("schema") != TELEMETRY_SCHEMA:
        raise _fail(f"unknown schema {d.get('schema')!r}")
    for name, typ in _REQUIRED.items():
        v = d.get(name)
        if not isinstance(v, typ) or isinstance(v, bool):
            raise _fail(f"field '{name}' is missing or has the wrong type")
    start, end = d["window"].get("start"), d["window"].get("end")
    if type(start) not in (int, float) or type(end) not in (int, float):
        raise _fail("window needs numeric start and end")
    _check_model(d["model"])
    _int(d["requests"], "requests")
    check_counts(list(d["errors"].values()), "errors")
    seq = d.get("seq")
    if require_seq or seq is not None:
        _int(seq, "seq")
    _int(d.get("sampled", 0), "sampled")
    _int(d.get("dropped_windows", 0), "dropped_windows")
    shadow = d.get("shadow", {}) or {}
    if not isinstance(d.get("resources", {}) or {}, dict) or not isinstance(shadow, dict):
        raise _fail("resources and shadow must be objects")
    if shadow:
        _int(shadow.get("compared", 0), "shadow compared")
        _int(shadow.get("agreed", 0), "shadow agreed")
    _check_prediction(d.get("prediction"))
    _latency(d["latency_us"])
    layout, _, flat, nan = _feature_counts(d.get("features", []))
    return layout, flat, nan


def from_wire(d: Mapping[str, Any]) -> WindowPayload:
    """See WindowPayload.from_wire. Lists are kept, not copied: parse once, then treat as read-only."""
    check_wire(d)
    if not isinstance(d.get("fleet"), str):
        raise _fail("field 'fleet' is missing or has the wrong type")
    w, seq = d["window"], d.get("seq")
    (names, hashes, _), counts, _, nan = _feature_counts(d.get("features", []))
    return WindowPayload(
        fleet=d["fleet"], device=d["device"], device_class=str(d.get("device_class") or ""),
        model=_model(d["model"]), start=w["start"], end=w["end"], seconds=w.get("seconds", round(w["end"] - w["start"], 3)),
        requests=d["requests"], sampled=_int(d.get("sampled", 0), "sampled"), errors=d["errors"],
        latency_us=d["latency_us"], resources=d.get("resources", {}) or {},
        features=list(map(FeatureCounts, names, hashes, counts, nan)), prediction=_prediction(d.get("prediction")),
        dropped_windows=_int(d.get("dropped_windows", 0), "dropped_windows"), seq=seq, sent_at=d.get("sent_at"),
        extra={k: v for k, v in d.items() if k not in _KNOWN})


def prediction_counts(h: CategoricalHistogram | FixedBinHistogram | None) -> PredictionCounts | None:
    if isinstance(h, CategoricalHistogram):
        return PredictionCounts("class", [int(c) for c in h.counts], h.n_classes)
    if isinstance(h, FixedBinHistogram):
        return PredictionCounts("value", [int(c) for c in h.counts], None, h.edges_hash, int(h.nan))
    return None


def build_window(*, fleet: str, device: str, device_class: str, model: ModelRef, start: float, end: float,
                 errors: Mapping[str, int], latency: LatencyHistogram, sampled: int, resources: Mapping[str, Any],
                 features: Sequence[tuple[str, FixedBinHistogram]] = (),
                 prediction: CategoricalHistogram | FixedBinHistogram | None = None, dropped_windows: int = 0,
                 extra: Mapping[str, Any] | None = None) -> WindowPayload:
    """A window from the agent's histograms (agent.telemetry and the simulators both call this)."""
    return WindowPayload(
        fleet=fleet, device=device, device_class=device_class, model=model,
        start=round(start, 3), end=round(end, 3), seconds=round(end - start, 3),
        requests=latency.total + sum(errors.values()), sampled=int(sampled), errors=dict(errors),
        latency_us=latency.to_dict(), resources=dict(resources),
        features=[FeatureCounts(name, h.edges_hash, [int(c) for c in h.counts], int(h.nan)) for name, h in features],
        prediction=prediction_counts(prediction), dropped_windows=int(dropped_windows), extra=dict(extra or {}))
