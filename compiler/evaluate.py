"""Task metrics of a compiled artifact against the reference model on the evaluation set.

Every task reduces to a per-sample score whose mean is the task metric, so the accuracy drop,
per-slice metrics and the slice gap (the fairness check) are computed the same way:
classification: 1 if the argmax equals the label (mean = accuracy);
embedding: cosine similarity to the reference embedding (reference scores 1.0);
regression: 1 - squared error / label variance (mean = R^2);
detection (YOLO-style head: batch x (4 box + classes) x anchors, boxes as cx, cy, w, h): AP@0.5 of
the candidate's boxes against the reference's detections above conf 0.25 (class-aware, after NMS),
per image, so the mean is an mAP50 with FP32 as ground truth; recall of the reference's boxes and
their mean matched IoU are reported beside (compiler/detection.py); 1 point = 0.01.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from compiler.detection import box_agreement, recall

TASKS = ("classification", "embedding", "regression", "detection")


@dataclass
class QualityMetrics:
    task: str
    metric_name: str
    metric: float
    reference_metric: float
    drop: float
    agreement: float
    slices: dict[str, float] = field(default_factory=dict)
    reference_slices: dict[str, float] = field(default_factory=dict)
    worst_slice: str | None = None
    slice_gap: float = 0.0
    reference_slice_gap: float = 0.0
    slice_gap_increase: float = 0.0
    n_samples: int = 0
    # Worst case beside the mean (a mean hides the one sentence the model ruins): the lowest and
    # 1st-percentile per-sample score (cosine for embeddings), and for regression the 99th
    # percentile over samples of each sample's RMS error to the reference, in reference std units.
    min_score: float = 1.0
    p1_score: float = 1.0
    p99_error: float = 0.0
    # Detection only: the share of the reference's detections the candidate keeps at conf 0.25, their
    # mean matched IoU, and how many there were (an eval set the reference detects nothing in
    # measures nothing).
    recall: float | None = None
    matched_iou: float | None = None
    reference_detections: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, (a * b).sum(axis=1) / np.where(den > 0, den, 1), 1.0)


def per_sample_scores(task: str, outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    if task == "classification":
        target = labels if labels is not None else reference.argmax(axis=-1)
        return (outputs.argmax(axis=-1) == target).astype(np.float64)
    if task == "embedding":
        return _cosine(outputs, reference)
    if task == "detection":
        return box_agreement(outputs, reference)
    if task == "regression":
        target = (labels if labels is not None else reference).reshape(outputs.shape[0], -1).astype(np.float64)
        out = outputs.reshape(outputs.shape[0], -1).astype(np.float64)
        var = float(target.var()) or 1.0
        return 1.0 - ((out - target) ** 2).mean(axis=1) / var
    raise ValueError(f"unknown task {task!r}")


def agreement(task: str, outputs: np.ndarray, reference: np.ndarray) -> float:
    """Fidelity to the reference: same class, or cosine similarity of the raw outputs."""
    if task == "classification":
        return float(np.mean(outputs.argmax(axis=-1) == reference.argmax(axis=-1)))
    if task == "detection":
        return float(np.mean(box_agreement(outputs, reference)))
    return float(np.mean(_cosine(outputs, reference)))


def _by_slice(scores: np.ndarray, slices: np.ndarray | None) -> dict[str, float]:
    if slices is None:
        return {}
    return {str(s): float(scores[slices == s].mean()) for s in np.unique(slices)}


def _r(x: float) -> float:
    return round(float(x), 6)


def quality(task: str, outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None,
            slices: np.ndarray | None) -> QualityMetrics:
    """Compare `outputs` with the reference outputs (FP32 source, or the teacher after distillation)."""
    ref = reference
    scores = per_sample_scores(task, outputs, ref, labels)
    ref_scores = per_sample_scores(task, ref, ref, labels)
    sl, ref_sl = _by_slice(scores, slices), _by_slice(ref_scores, slices)
    gap = (max(sl.values()) - min(sl.values())) if sl else 0.0
    ref_gap = (max(ref_sl.values()) - min(ref_sl.values())) if ref_sl else 0.0
    name = {"classification": "accuracy", "embedding": "cosine", "regression": "r2", "detection": "map50"}[task]
    return QualityMetrics(
        task=task, metric_name=name, metric=_r(scores.mean()), reference_metric=_r(ref_scores.mean()),
        drop=_r(ref_scores.mean() - scores.mean()), agreement=_r(agreement(task, outputs, reference)),
        slices={k: _r(v) for k, v in sl.items()}, reference_slices={k: _r(v) for k, v in ref_sl.items()},
        worst_slice=min(sl, key=lambda k: sl[k]) if sl else None, slice_gap=_r(gap),
        reference_slice_gap=_r(ref_gap), slice_gap_increase=_r(gap - ref_gap), n_samples=int(outputs.shape[0]),
        **_worst_case(task, outputs, reference), **_detection_extras(task, outputs, reference))


def _detection_extras(task: str, outputs: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    if task != "detection":
        return {}
    r, iou, n = recall(outputs, reference)
    return {"recall": _r(r), "matched_iou": _r(iou), "reference_detections": n}


def _worst_case(task: str, outputs: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Fidelity to the reference per sample: the tail the mean-based gates cannot see."""
    fidelity = {"classification": lambda: (outputs.argmax(axis=-1) == reference.argmax(axis=-1)).astype(np.float64),
                "detection": lambda: box_agreement(outputs, reference)}.get(task, lambda: _cosine(outputs, reference))()
    out = np.asarray(outputs, np.float64).reshape(outputs.shape[0], -1)
    ref = np.asarray(reference, np.float64).reshape(reference.shape[0], -1)
    scale = float(ref.std()) or 1.0
    err = np.sqrt(((out - ref) ** 2).mean(axis=1)) / scale
    return {"min_score": _r(fidelity.min()), "p1_score": _r(np.percentile(fidelity, 1)),
            "p99_error": _r(np.percentile(err, 99))}
