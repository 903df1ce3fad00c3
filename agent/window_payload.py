"""The one telemetry window type: what an agent reports per (window, model role) and what the
fleet's ingest, aggregation, drift and every simulator read. docs/telemetry.schema.json is its
wire form (`to_wire()`); `from_wire(dict)` checks it with the one shape check (agent.window_schema).

    payload = WindowPayload.from_wire(doc)   # ValueError("telemetry: ...") on a bad shape
    payload.features[0].counts, payload.layout, payload.to_wire()

Building a window from agent histograms (`build_window`) is shared by agent.telemetry and the
simulators, so tests feed the fleet exactly what a device would send.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.protocol import TELEMETRY_SCHEMA
from agent.sketches import CategoricalHistogram, FixedBinHistogram, LatencyHistogram
from agent.window_schema import MAX_COUNT, OPTIONAL, Layout, WireCounts, check_wire, decode_wire

__all__ = ["MAX_COUNT", "OPTIONAL", "Layout", "WireCounts", "check_wire", "decode_wire"]  # re-exported


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


_KNOWN = frozenset(("schema", "fleet", "device", "device_class", "window", "model", "requests", "sampled",
                    "errors", "latency_us", "resources", "features", "prediction", "dropped_windows", "seq",
                    "sent_at"))


def from_wire(d: Mapping[str, Any]) -> WindowPayload:
    """See WindowPayload.from_wire. Lists are kept, not copied: parse once, then treat as read-only."""
    (names, hashes, _), _, nan = check_wire(d)
    if not isinstance(d.get("fleet"), str):
        raise ValueError("telemetry: field 'fleet' is missing or has the wrong type")
    w, m, p = d["window"], d["model"], d.get("prediction")
    return WindowPayload(
        fleet=d["fleet"], device=d["device"], device_class=str(d.get("device_class") or ""),
        model=ModelRef(m["name"], m["version"], m["role"], str(m.get("manifest_sha256") or "")),
        start=w["start"], end=w["end"], seconds=w.get("seconds", round(w["end"] - w["start"], 3)),
        requests=d["requests"], sampled=d.get("sampled", 0), errors=d["errors"], latency_us=d["latency_us"],
        resources=d.get("resources") or {},
        features=list(map(FeatureCounts, names, hashes, [f["counts"] for f in d.get("features") or ()], nan)),
        prediction=None if p is None else PredictionCounts(p["kind"], p["counts"], p.get("n_classes"),
                                                           p.get("edges_hash"), p.get("nan", 0)),
        dropped_windows=d.get("dropped_windows", 0), seq=d.get("seq"), sent_at=d.get("sent_at"),
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
