"""Mergeable sketches shared by compiler, agent and fleet.

* FixedBinHistogram: counts on fixed bin edges taken from the reference data (the bundle's
  drift baseline). Two histograms on the same edges merge by exact addition, so the fleet can
  add up thousands of devices without losing anything.
* LatencyHistogram: log-spaced buckets fixed for everyone (about 5% relative error), mergeable.
* FeatureExtractor: turns a batch of model inputs into the per-sample drift features that the
  baseline describes (columns, per-channel means, per-position means).

Bin convention: len(counts) == len(edges) + 1. Bin 0 is (-inf, e0), bin i is [e(i-1), e(i)),
the last bin is [e_last, +inf). NaN goes to a separate `nan` counter.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.canonical import canonical_json


def edges_hash(edges: Sequence[float]) -> str:
    """Hash of the edges, carried with every histogram so mismatched edges never merge silently."""
    return hashlib.sha256(canonical_json([float(e) for e in edges])).hexdigest()[:16]


def quantile_edges(values: np.ndarray, n_bins: int = 10) -> list[float]:
    """Inner edges at reference quantiles, de-duplicated (constant features get one edge)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return [0.0]
    qs = np.quantile(v, np.linspace(0, 1, n_bins + 1)[1:-1])
    edges = sorted({round(float(q), 9) for q in qs})
    return edges or [round(float(v[0]), 9)]


@dataclass
class FixedBinHistogram:
    edges: list[float]
    counts: np.ndarray = field(default=None)  # type: ignore[arg-type]
    nan: int = 0

    def __post_init__(self) -> None:
        self.edges = [float(e) for e in self.edges]
        if self.counts is None:
            self.counts = np.zeros(len(self.edges) + 1, dtype=np.int64)
        else:
            self.counts = np.asarray(self.counts, dtype=np.int64)
        if len(self.counts) != len(self.edges) + 1:
            raise ValueError("counts must have len(edges) + 1 entries")
        self._edges_arr = np.asarray(self.edges, dtype=np.float64)

    @property
    def edges_hash(self) -> str:
        return edges_hash(self.edges)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def add(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        finite = np.isfinite(v)
        self.nan += int(v.size - finite.sum())
        idx = np.searchsorted(self._edges_arr, v[finite], side="right")
        self.counts += np.bincount(idx, minlength=len(self.counts))[: len(self.counts)]

    def merge(self, other: FixedBinHistogram) -> FixedBinHistogram:
        if other.edges != self.edges:
            raise ValueError("cannot merge histograms with different bin edges")
        return FixedBinHistogram(self.edges, self.counts + other.counts, self.nan + other.nan)

    def to_dict(self) -> dict[str, Any]:
        return {"edges": self.edges, "counts": [int(c) for c in self.counts], "nan": int(self.nan),
                "edges_hash": self.edges_hash}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FixedBinHistogram:
        h = cls(list(data["edges"]), np.asarray(data["counts"], dtype=np.int64), int(data.get("nan", 0)))
        if "edges_hash" in data and data["edges_hash"] != h.edges_hash:
            raise ValueError("edges_hash does not match the edges")
        return h

class ColumnHistograms:
    """Adds an (n, F) batch to F fixed-bin histograms that share a bin count in one numpy pass.

    The per-feature loop was the telemetry worker's main cost on wide inputs (hundreds of
    features x a few numpy calls each, per batch); this keeps the same counts exactly."""

    def __init__(self, edges: list[list[float]]) -> None:
        self.n_edges = len(edges[0]) if edges else 0
        self.uniform = bool(edges) and all(len(e) == self.n_edges for e in edges)
        self.matrix = np.asarray(edges, dtype=np.float64) if self.uniform else None  # (F, K)

    def add(self, hists: list[FixedBinHistogram], cols: np.ndarray) -> None:
        cols = np.asarray(cols, dtype=np.float64)
        if self.matrix is None or cols.ndim != 2 or cols.shape[1] != len(hists) or len(hists) != len(self.matrix):
            for h, col in zip(hists, cols.T, strict=False):
                h.add(col)
            return
        n_feat, n_bins = self.matrix.shape[0], self.n_edges + 1
        finite = np.isfinite(cols)
        # side="right" searchsorted == how many edges are <= v
        idx = (cols[:, :, None] >= self.matrix[None, :, :]).sum(axis=2)
        flat = (idx + np.arange(n_feat) * n_bins)[finite]
        counts = np.bincount(flat, minlength=n_feat * n_bins).reshape(n_feat, n_bins)
        nans = cols.shape[0] - finite.sum(axis=0)
        for j, h in enumerate(hists):
            h.counts += counts[j]
            h.nan += int(nans[j])


@dataclass
class CategoricalHistogram:
    """Counts per class index 0..n_classes-1 (predictions of a classifier)."""

    n_classes: int
    counts: np.ndarray = field(default=None)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        self.counts = (np.zeros(self.n_classes, dtype=np.int64) if self.counts is None
                       else np.asarray(self.counts, dtype=np.int64))

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def add(self, classes: np.ndarray) -> None:
        c = np.asarray(classes, dtype=np.int64).ravel()
        c = c[(c >= 0) & (c < self.n_classes)]
        self.counts += np.bincount(c, minlength=self.n_classes)

    def merge(self, other: CategoricalHistogram) -> CategoricalHistogram:
        if other.n_classes != self.n_classes:
            raise ValueError("cannot merge categorical histograms of different sizes")
        return CategoricalHistogram(self.n_classes, self.counts + other.counts)

    def to_dict(self) -> dict[str, Any]:
        return {"n_classes": self.n_classes, "counts": [int(c) for c in self.counts]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CategoricalHistogram:
        return cls(int(data["n_classes"]), np.asarray(data["counts"], dtype=np.int64))


# Latency buckets: 1 us .. ~100 s, growth 1.1 (about 5% relative error at any quantile).
LATENCY_GROWTH = 1.1
LATENCY_MIN_US = 1.0
LATENCY_BUCKETS = 194
_LOG_GROWTH = math.log(LATENCY_GROWTH)


@dataclass
class LatencyHistogram:
    counts: np.ndarray = field(default=None)  # type: ignore[arg-type]
    sum_us: float = 0.0

    def __post_init__(self) -> None:
        self.counts = (np.zeros(LATENCY_BUCKETS, dtype=np.int64) if self.counts is None
                       else np.asarray(self.counts, dtype=np.int64))

    @staticmethod
    def bucket(us: float) -> int:
        if us <= LATENCY_MIN_US:
            return 0
        return min(LATENCY_BUCKETS - 1, 1 + int(math.log(us / LATENCY_MIN_US) / _LOG_GROWTH))

    @staticmethod
    def upper_bound_us(bucket: int) -> float:
        return LATENCY_MIN_US * LATENCY_GROWTH**bucket

    def record(self, us: float) -> None:
        self.counts[self.bucket(us)] += 1
        self.sum_us += us

    def record_many(self, us: np.ndarray) -> None:
        v = np.maximum(np.asarray(us, dtype=np.float64).ravel(), LATENCY_MIN_US)
        idx = np.minimum(LATENCY_BUCKETS - 1, 1 + (np.log(v / LATENCY_MIN_US) / _LOG_GROWTH).astype(np.int64))
        idx[v <= LATENCY_MIN_US] = 0
        self.counts += np.bincount(idx, minlength=LATENCY_BUCKETS)
        self.sum_us += float(v.sum())

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding quantile q, in microseconds (0 when empty)."""
        n = self.total
        if n == 0:
            return 0.0
        rank = max(1, math.ceil(q * n))
        idx = int(np.searchsorted(np.cumsum(self.counts), rank))
        return self.upper_bound_us(idx)

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        return LatencyHistogram(self.counts + other.counts, self.sum_us + other.sum_us)

    def to_dict(self) -> dict[str, Any]:
        """Sparse form: {bucket index: count} keeps MQTT messages small."""
        nz = np.nonzero(self.counts)[0]
        return {"growth": LATENCY_GROWTH, "min_us": LATENCY_MIN_US,
                "buckets": {str(int(i)): int(self.counts[i]) for i in nz}, "sum_us": round(self.sum_us, 3)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyHistogram:
        if float(data.get("growth", LATENCY_GROWTH)) != LATENCY_GROWTH:
            raise ValueError("latency histogram uses other buckets")
        counts = np.zeros(LATENCY_BUCKETS, dtype=np.int64)
        for k, v in data.get("buckets", {}).items():
            i = int(k)
            if not 0 <= i < LATENCY_BUCKETS or int(v) < 0:
                raise ValueError("latency bucket out of range")
            counts[i] = int(v)
        return cls(counts, float(data.get("sum_us", 0.0)))


# --------------------------------------------------------------------------------------------
# Drift features


@dataclass(frozen=True)
class FeatureExtractor:
    """How per-sample drift features are read from one model input.

    reduce_axes: axes (of the per-sample array, batch axis removed) averaged away first, e.g.
    (1, 2) for per-channel means of CHW images, (0,) for per-dimension means of a sequence.
    indices: which of the flattened remaining values are features (None: all).
    """

    input: str
    reduce_axes: tuple[int, ...] = ()
    indices: tuple[int, ...] | None = None
    names: tuple[str, ...] | None = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.asarray(batch, dtype=np.float64)
        if self.reduce_axes:
            x = x.mean(axis=tuple(a + 1 for a in self.reduce_axes))
        x = x.reshape(x.shape[0], -1)
        if self.indices is not None:
            x = x[:, list(self.indices)]
        return x

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "reduce_axes": list(self.reduce_axes),
                "indices": None if self.indices is None else list(self.indices),
                "names": None if self.names is None else list(self.names)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureExtractor:
        idx = data.get("indices")
        names = data.get("names")
        return cls(str(data["input"]), tuple(int(a) for a in data.get("reduce_axes", [])),
                   None if idx is None else tuple(int(i) for i in idx),
                   None if names is None else tuple(str(n) for n in names))


def build_drift_baseline(
    inputs: np.ndarray,
    predictions: np.ndarray,
    *,
    input_name: str,
    reduce_axes: tuple[int, ...] = (),
    max_features: int = 32,
    n_bins: int = 10,
    prediction_kind: str = "class",
    n_classes: int | None = None,
    feature_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The manifest's `drift_baseline`: extractor, per-feature edges and reference counts, and
    the prediction histogram. Features are the `max_features` with the largest variance.

    prediction_kind: "class" (predictions are class indices; n_classes bins) or "value"
    (a numeric score per sample, e.g. an embedding norm or a regression output).
    """
    extractor = FeatureExtractor(input_name, tuple(reduce_axes))
    feats = extractor(inputs)
    var = np.nan_to_num(feats.var(axis=0))
    order = np.argsort(-var, kind="stable")[: min(max_features, feats.shape[1])]
    order = np.sort(order)
    names = [feature_names[i] if feature_names else f"f{i}" for i in order]
    extractor = FeatureExtractor(input_name, tuple(reduce_axes), tuple(int(i) for i in order), tuple(names))
    features = []
    for col, name in zip(extractor(inputs).T, names, strict=True):
        h = FixedBinHistogram(quantile_edges(col, n_bins))
        h.add(col)
        features.append({"name": name, **h.to_dict()})
    if prediction_kind == "class":
        k = int(n_classes if n_classes is not None else int(np.max(predictions)) + 1)
        ph = CategoricalHistogram(k)
        ph.add(predictions)
        pred = {"kind": "class", **ph.to_dict()}
    else:
        vals = np.asarray(predictions, dtype=np.float64).ravel()
        fh = FixedBinHistogram(quantile_edges(vals, n_bins))
        fh.add(vals)
        pred = {"kind": "value", **fh.to_dict()}
    return {"version": 1, "extractor": extractor.to_dict(), "n_samples": int(feats.shape[0]),
            "features": features, "prediction": pred}


# --------------------------------------------------------------------------------------------
# Drift statistics (the fleet computes these; the compiler and tests reuse them)


def _proportions(counts: np.ndarray, eps: float) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum(axis=-1, keepdims=True)
    p = np.where(total > 0, c / np.where(total > 0, total, 1), 0.0)
    p = np.clip(p, eps, None)
    return p / p.sum(axis=-1, keepdims=True)


def psi(reference: np.ndarray, current: np.ndarray, eps: float = 1e-4) -> np.ndarray | float:
    """Population stability index; works on the last axis, so many features at once."""
    p, q = _proportions(reference, eps), _proportions(current, eps)
    out = np.sum((q - p) * np.log(q / p), axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def js_distance(reference: np.ndarray, current: np.ndarray, eps: float = 1e-12) -> np.ndarray | float:
    """Jensen-Shannon distance (base 2, in [0, 1]) on the last axis."""
    p, q = _proportions(reference, eps), _proportions(current, eps)
    m = 0.5 * (p + q)
    div = 0.5 * np.sum(p * np.log2(p / m), axis=-1) + 0.5 * np.sum(q * np.log2(q / m), axis=-1)
    out = np.sqrt(np.clip(div, 0.0, 1.0))
    return float(out) if np.ndim(out) == 0 else out
