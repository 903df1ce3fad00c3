"""Online quality merged from telemetry: confusion matrices per slice, error histograms,
confidence histograms and calibration, plus labels joined at the backend (fleet/analytics/join.py).

One OnlineQuality per (model, version, and whatever cohort the caller selected); merging is
exact addition, so any grouping (version, class, cohort, device class, slice) is a filter on
the windows followed by `merge_payloads`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.confidence import CONFIDENCE_EDGES, OTHER_SLICE
from fleet.analytics.stats import wilson

ESTIMATE_MIN_BIN_LABELS = 30   # a confidence bin's own labelled accuracy is used from this many labels on


@dataclass
class OnlineQuality:
    kind: str | None = None                                   # "class" or "value"
    confusion: dict[str, np.ndarray] = field(default_factory=dict)   # slice -> (k, k) [true, predicted]
    errors: dict[str, dict[str, Any]] = field(default_factory=dict)  # slice -> n, counts, abs/sq sums
    error_edges: list[float] | None = None
    calib_n: np.ndarray = field(default_factory=lambda: np.zeros(len(CONFIDENCE_EDGES) + 1, dtype=np.int64))
    calib_correct: np.ndarray = field(default_factory=lambda: np.zeros(len(CONFIDENCE_EDGES) + 1, dtype=np.int64))
    confidence: np.ndarray = field(default_factory=lambda: np.zeros(len(CONFIDENCE_EDGES) + 1, dtype=np.int64))
    low_confidence: int = 0
    invalid: int = 0

    # -- merging ------------------------------------------------------------------------------
    def add_outcomes(self, out: Mapping[str, Any]) -> None:
        kind = out.get("kind")
        if kind not in ("class", "value") or (self.kind is not None and kind != self.kind):
            return
        self.kind = kind
        self.invalid += int(out.get("invalid", 0) or 0)
        for key, s in (out.get("slices") or {}).items():
            if kind == "class" and isinstance(s.get("confusion_sparse"), list):
                s = {"confusion": _dense(s["confusion_sparse"], int(out.get("n_classes", 0) or 0))}
            if kind == "class" and isinstance(s.get("confusion"), list):
                m = np.asarray(s["confusion"], dtype=np.int64)
                cur = self.confusion.get(key)
                if cur is None:
                    self.confusion[key] = m
                elif cur.shape == m.shape:
                    self.confusion[key] = cur + m
            elif kind == "value" and isinstance(s.get("counts"), list):
                self.error_edges = list(out.get("error_edges") or self.error_edges or [])
                cur = self.errors.setdefault(key, {"n": 0, "counts": np.zeros(len(s["counts"]), dtype=np.int64),
                                                   "abs_error_sum": 0.0, "sq_error_sum": 0.0})
                if len(cur["counts"]) == len(s["counts"]):
                    cur["n"] += int(s.get("n", 0))
                    cur["counts"] = cur["counts"] + np.asarray(s["counts"], dtype=np.int64)
                    cur["abs_error_sum"] += float(s.get("abs_error_sum", 0.0))
                    cur["sq_error_sum"] += float(s.get("sq_error_sum", 0.0))
        cal = out.get("calibration")
        if isinstance(cal, Mapping) and len(cal.get("n", ())) == len(self.calib_n):
            self.calib_n = self.calib_n + np.asarray(cal["n"], dtype=np.int64)
            self.calib_correct = self.calib_correct + np.asarray(cal["correct"], dtype=np.int64)

    def add_payload(self, p: Mapping[str, Any]) -> None:
        conf = p.get("confidence")
        if isinstance(conf, Mapping) and len(conf.get("counts", ())) == len(self.confidence):
            self.confidence = self.confidence + np.asarray(conf["counts"], dtype=np.int64)
            self.low_confidence += int(conf.get("low", 0) or 0)
        out = p.get("outcomes")
        if isinstance(out, Mapping):
            self.add_outcomes(out)

    def add_pairs(self, slice_key: str, true: np.ndarray, pred: np.ndarray, n_classes: int) -> None:
        """Labels joined at the backend (request id -> prediction record) as (true, predicted) pairs."""
        self.kind = self.kind or "class"
        m = self.confusion.setdefault(slice_key, np.zeros((n_classes, n_classes), dtype=np.int64))
        ok = (true >= 0) & (true < m.shape[0]) & (pred >= 0) & (pred < m.shape[1])
        np.add.at(m, (true[ok].astype(np.int64), pred[ok].astype(np.int64)), 1)
        self.invalid += int((~ok).sum())

    # -- metrics ------------------------------------------------------------------------------
    def total_confusion(self) -> np.ndarray | None:
        mats = list(self.confusion.values())
        if not mats:
            return None
        k = max(m.shape[0] for m in mats)
        tot = np.zeros((k, k), dtype=np.int64)
        for m in mats:
            tot[: m.shape[0], : m.shape[1]] += m
        return tot

    @property
    def labelled(self) -> int:
        if self.kind == "value":
            return sum(int(s["n"]) for s in self.errors.values())
        m = self.total_confusion()
        return 0 if m is None else int(m.sum())

    @property
    def correct(self) -> int:
        m = self.total_confusion()
        return 0 if m is None else int(np.trace(m))

    def accuracy(self) -> dict[str, Any] | None:
        n, k = self.labelled, self.correct
        if self.kind != "class" or n == 0:
            return None
        lo, hi = wilson(k, n)
        return {"value": round(k / n, 6), "low": round(lo, 6), "high": round(hi, 6), "n": n, "correct": k}

    def per_class(self) -> list[dict[str, Any]]:
        m = self.total_confusion()
        if m is None:
            return []
        out = []
        for c in range(m.shape[0]):
            tp, support, predicted = int(m[c, c]), int(m[c].sum()), int(m[:, c].sum())
            prec = tp / predicted if predicted else None
            rec = tp / support if support else None
            f1 = 2 * prec * rec / (prec + rec) if prec and rec else (0.0 if support or predicted else None)
            out.append({"class": c, "support": support, "precision": prec, "recall": rec, "f1": f1})
        return out

    def macro_f1(self) -> float | None:
        f1s = [c["f1"] for c in self.per_class() if c["support"] > 0 and c["f1"] is not None]
        return round(float(np.mean(f1s)), 6) if f1s else None

    def slices(self, min_count: int = 1) -> dict[str, dict[str, Any]]:
        """Accuracy (classification) or MAE/RMSE (regression) per slice with Wilson intervals."""
        out: dict[str, dict[str, Any]] = {}
        if self.kind == "class":
            for key, m in sorted(self.confusion.items()):
                n, k = int(m.sum()), int(np.trace(m))
                if n >= min_count and n:
                    lo, hi = wilson(k, n)
                    out[key] = {"n": n, "accuracy": round(k / n, 6), "low": round(lo, 6), "high": round(hi, 6)}
        else:
            for key, s in sorted(self.errors.items()):
                n = int(s["n"])
                if n >= min_count and n:
                    out[key] = {"n": n, "mae": round(s["abs_error_sum"] / n, 6),
                                "rmse": round(math.sqrt(s["sq_error_sum"] / n), 6)}
        return out

    def worst_slice_gap(self, min_count: int = 30) -> dict[str, Any] | None:
        """Best minus worst slice accuracy among slices with `min_count` labels (OTHER_SLICE excluded)."""
        sl = {k: v for k, v in self.slices(min_count).items() if k != OTHER_SLICE and "accuracy" in v}
        if len(sl) < 2:
            return None
        worst = min(sl, key=lambda k: sl[k]["accuracy"])
        best = max(sl, key=lambda k: sl[k]["accuracy"])
        return {"gap": round(sl[best]["accuracy"] - sl[worst]["accuracy"], 6), "worst": worst, "best": best,
                "worst_accuracy": sl[worst]["accuracy"], "worst_low": sl[worst]["low"],
                "best_high": sl[best]["high"],
                # the gap is real when the intervals do not overlap
                "significant": sl[worst]["high"] < sl[best]["low"]}

    def regression(self) -> dict[str, Any] | None:
        if self.kind != "value" or not self.errors:
            return None
        n = self.labelled
        a = sum(s["abs_error_sum"] for s in self.errors.values())
        q = sum(s["sq_error_sum"] for s in self.errors.values())
        return {"n": n, "mae": round(a / n, 6), "rmse": round(math.sqrt(q / n), 6)} if n else None

    def estimated_accuracy(self) -> dict[str, Any] | None:
        """Label-free estimate (NannyML's CBPE idea): the expected accuracy of the predictions seen,
        from their top-1 confidence histogram; each bin's accuracy is its own labelled accuracy
        once it has ESTIMATE_MIN_BIN_LABELS labels (calibration), else the bin's mid confidence
        (the model assumed calibrated). Marked as an estimate."""
        n = int(self.confidence.sum())
        if n == 0:
            return None
        edges = [0.0, *CONFIDENCE_EDGES, 1.0]
        mids = np.array([(edges[i] + edges[i + 1]) / 2 for i in range(len(edges) - 1)])
        calibrated = self.calib_n >= ESTIMATE_MIN_BIN_LABELS
        acc = np.where(calibrated, self.calib_correct / np.maximum(self.calib_n, 1), mids)
        value = float((self.confidence * acc).sum() / n)
        return {"value": round(value, 6), "estimate": True, "predictions": n,
                "calibrated_bins": int(calibrated.sum()), "method": "cbpe"}

    def low_confidence_rate(self) -> float | None:
        n = int(self.confidence.sum())
        return round(self.low_confidence / n, 6) if n else None

    def to_dict(self, min_slice_count: int = 1) -> dict[str, Any]:
        return {"kind": self.kind, "labelled": self.labelled, "invalid": self.invalid,
                "accuracy": self.accuracy(), "macro_f1": self.macro_f1(), "per_class": self.per_class(),
                "regression": self.regression(), "slices": self.slices(min_slice_count),
                "worst_slice_gap": self.worst_slice_gap(), "estimated_accuracy": self.estimated_accuracy(),
                "low_confidence_rate": self.low_confidence_rate(), "confidence_counts": self.confidence.tolist()}


def _dense(cells: list[Any], k: int) -> list[list[int]]:
    """[[true, predicted, count], ...] (large class counts) as a k x k matrix."""
    m = np.zeros((k, k), dtype=np.int64)
    for cell in cells:
        if isinstance(cell, list) and len(cell) == 3 and all(isinstance(v, int) for v in cell) \
                and 0 <= cell[0] < k and 0 <= cell[1] < k and cell[2] >= 0:
            m[cell[0], cell[1]] += cell[2]
    return m.tolist()


def merge_payloads(payloads: Iterable[Mapping[str, Any]]) -> OnlineQuality:
    q = OnlineQuality()
    for p in payloads:
        q.add_payload(p)
    return q
