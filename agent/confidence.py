"""Model confidence and slices, computed on the device from the sampled batch (numpy, vectorised).

The manifest's `monitoring` section (written by compiler/manifest.py) says which output holds
class scores, whether they are logits (softmax needed) and which slice keys to keep. Bundles
built before it existed still get confidence when their drift baseline says "class": the
agent then treats output 0 as scores and applies softmax only when rows do not already sum to 1.

Edges are fixed for everyone (CONFIDENCE_EDGES, MARGIN_EDGES), so the fleet merges windows of
all devices and versions by adding counts; convention as agent.sketches: len(counts) ==
len(edges) + 1, bin i is [e(i-1), e(i)).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CONFIDENCE_EDGES = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
MARGIN_EDGES = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
LOW_CONFIDENCE = 0.5           # top-1 probability under this counts as low confidence
MAX_SLICES = 32                # distinct slice keys per model and window; more go to OTHER_SLICE
MIN_SLICE_COUNT = 20           # a slice with fewer labelled outcomes is reported inside OTHER_SLICE
OTHER_SLICE = "_other"
ALL_SLICE = "_all"


@dataclass(frozen=True)
class FeatureSlice:
    """A slice key read from one input feature's bins: value = bin index on `edges`."""

    key: str
    input: str
    index: int
    edges: tuple[float, ...]


@dataclass(frozen=True)
class MonitorSpec:
    """What the agent monitors for one model (manifest `monitoring`, version 1)."""

    task: str = "classification"          # or "regression"
    output: int = 0
    softmax: bool | None = None           # None: decide per batch (rows summing to 1 are probabilities)
    n_classes: int | None = None
    low_confidence: float = LOW_CONFIDENCE
    metadata_keys: tuple[str, ...] = ()
    feature_slices: tuple[FeatureSlice, ...] = ()
    max_slices: int = MAX_SLICES
    min_slice_count: int = MIN_SLICE_COUNT
    error_edges: tuple[float, ...] = (-10.0, -5.0, -2.0, -1.0, -0.5, -0.1, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0)

    @property
    def classification(self) -> bool:
        return self.task == "classification"

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> MonitorSpec | None:
        mon = manifest.get("monitoring")
        if not isinstance(mon, Mapping):
            pred = (manifest.get("drift_baseline") or {}).get("prediction") or {}
            if pred.get("kind") == "class":
                return cls(n_classes=int(pred["n_classes"]))
            return cls(task="regression") if pred.get("kind") == "value" else None
        slices = mon.get("slices") or {}
        feats = tuple(FeatureSlice(str(f["key"]), str(f["input"]), int(f["index"]),
                                   tuple(float(e) for e in f["edges"])) for f in slices.get("features", []))
        kw: dict[str, Any] = {}
        if "error_edges" in mon:
            kw["error_edges"] = tuple(float(e) for e in mon["error_edges"])
        return cls(task=str(mon.get("task", "classification")), output=int(mon.get("output", 0)),
                   softmax=mon.get("softmax"), n_classes=mon.get("n_classes"),
                   low_confidence=float(mon.get("low_confidence", LOW_CONFIDENCE)),
                   metadata_keys=tuple(str(k) for k in slices.get("metadata", [])), feature_slices=feats,
                   max_slices=int(slices.get("max_slices", MAX_SLICES)),
                   min_slice_count=int(slices.get("min_count", MIN_SLICE_COUNT)), **kw)


def probabilities(scores: np.ndarray, softmax: bool | None) -> np.ndarray:
    """(n, k) class probabilities from an output; softmax when asked, or when undecided and the
    rows are not already a distribution."""
    s = np.asarray(scores, dtype=np.float64)
    s = s.reshape(s.shape[0], -1) if s.ndim > 1 else s.reshape(-1, 1)
    if softmax is None:
        softmax = bool(s.size) and not (s.min() >= 0.0 and np.allclose(s.sum(axis=1), 1.0, atol=1e-3))
    if softmax:
        s = np.exp(s - s.max(axis=1, keepdims=True))
        s /= s.sum(axis=1, keepdims=True)
    return s


def top2(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predicted class, top-1 probability, margin top-1 - top-2) per row."""
    if p.shape[1] == 1:
        return np.zeros(len(p), dtype=np.int64), p[:, 0], p[:, 0]
    part = np.partition(p, -2, axis=1)
    return p.argmax(axis=1), part[:, -1], part[:, -1] - part[:, -2]


def bucket(values: np.ndarray, edges: list[float]) -> np.ndarray:
    return np.searchsorted(np.asarray(edges), np.asarray(values, dtype=np.float64), side="right")


@dataclass
class ConfidenceStats:
    """Top-1 and margin histograms plus the low-confidence count of one model in one window."""

    low_threshold: float = LOW_CONFIDENCE
    top1: np.ndarray = field(default_factory=lambda: np.zeros(len(CONFIDENCE_EDGES) + 1, dtype=np.int64))
    margin: np.ndarray = field(default_factory=lambda: np.zeros(len(MARGIN_EDGES) + 1, dtype=np.int64))
    low: int = 0
    sum_top1: float = 0.0

    def add(self, top1: np.ndarray, margin: np.ndarray) -> None:
        n = len(self.top1)
        self.top1 += np.bincount(bucket(top1, CONFIDENCE_EDGES), minlength=n)[:n]
        self.margin += np.bincount(bucket(margin, MARGIN_EDGES), minlength=n)[:n]
        self.low += int((top1 < self.low_threshold).sum())
        self.sum_top1 += float(top1.sum())

    @property
    def total(self) -> int:
        return int(self.top1.sum())

    def to_dict(self) -> dict[str, Any]:
        n = self.total
        return {"edges": CONFIDENCE_EDGES, "counts": [int(c) for c in self.top1],
                "margin_edges": MARGIN_EDGES, "margin_counts": [int(c) for c in self.margin],
                "low_threshold": self.low_threshold, "low": self.low,
                "low_rate": round(self.low / n, 6) if n else 0.0, "mean_top1": round(self.sum_top1 / n, 6) if n else None}


class Slicer:
    """Slice key per request from its metadata and feature bins, with a cardinality cap."""

    def __init__(self, spec: MonitorSpec) -> None:
        self.spec = spec
        self.seen: set[str] = set()
        self.enabled = bool(spec.metadata_keys or spec.feature_slices)

    def key(self, metadata: Mapping[str, Any] | None, inputs: Mapping[str, np.ndarray] | None = None) -> str:
        if not self.enabled:
            return ALL_SLICE
        parts = []
        for k in self.spec.metadata_keys:
            v = (metadata or {}).get(k)
            parts.append(f"{k}={str(v)[:32] if v is not None else '?'}")
        for f in self.spec.feature_slices:
            x = (inputs or {}).get(f.input)
            if x is None:
                parts.append(f"{f.key}=?")
                continue
            v = float(np.asarray(x).reshape(-1)[f.index]) if np.asarray(x).size > f.index else float("nan")
            parts.append(f"{f.key}={int(np.searchsorted(f.edges, v, side='right'))}" if np.isfinite(v)
                         else f"{f.key}=?")
        key = ",".join(parts)
        if key not in self.seen:
            if len(self.seen) >= self.spec.max_slices:
                return OTHER_SLICE
            self.seen.add(key)
        return key


def observe(spec: MonitorSpec, output: np.ndarray, metas: list[tuple[str, str] | None], stats: Any,
            max_records: int) -> ConfidenceStats | None:
    """Add one sampled batch (rows of `len(metas)` requests, concatenated) to the window `stats`:
    confidence histograms, slice counts and up to `max_records` prediction records."""
    y = np.asarray(output)
    y2 = y.reshape(y.shape[0], -1) if y.ndim > 1 else y.reshape(-1, 1)
    n = y2.shape[0]
    conf = stats.confidence
    if spec.classification:
        pred, top1, margin = top2(probabilities(y2, spec.softmax))
        if conf is None:
            conf = ConfidenceStats(spec.low_confidence)
        conf.add(top1, margin)
    else:
        pred, top1 = y2[:, 0].astype(np.float64), None
    per = n // len(metas) if metas and n % len(metas) == 0 else 0   # rows per request (same batch size)
    for i, meta in enumerate(metas):
        if meta is None:
            continue
        rid, slice_key = meta
        if slice_key != ALL_SLICE:
            stats.slices[slice_key] = stats.slices.get(slice_key, 0) + max(per, 1)
        if per == 0 or len(stats.records) >= max_records:
            continue
        for j in range(per):
            row = i * per + j
            rec: dict[str, Any] = {"id": rid if per == 1 else f"{rid}/{j}", "slice": slice_key}
            if top1 is not None:
                rec["prediction"], rec["confidence"] = int(pred[row]), round(float(top1[row]), 4)
            else:
                rec["prediction"] = float(pred[row])
            stats.records.append(rec)
    return conf


def slice_counts(counts: dict[str, int], min_count: int) -> dict[str, int]:
    """Counts per slice key; keys with fewer than `min_count` are added up under OTHER_SLICE."""
    out: dict[str, int] = {}
    for key, c in counts.items():
        k = key if c >= min_count else OTHER_SLICE
        out[k] = out.get(k, 0) + int(c)
    return dict(sorted(out.items()))
