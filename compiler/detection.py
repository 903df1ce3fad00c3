"""Detection agreement: the reference's real detections found again in the candidate's output.

Why not compare raw anchors: on images with nothing the detector knows, its "most confident"
anchors are noise boxes (scores ~0.1) whose coordinates INT8 may move freely without changing a
single detection. The score here is what a detection benchmark measures, with the FP32 (reference)
detections as the ground truth:

- decode a YOLO-style head (batch x (4 box + classes) x anchors, boxes cx, cy, w, h, class scores
  already activated) and run class-aware NMS (IoU 0.7); the reference's boxes scoring >=
  `DETECTION_SCORE` (0.25, Ultralytics' predict default) are the ground truth;
- the candidate's boxes down to `VAL_SCORE` (0.001, at most 300: Ultralytics' val defaults) are
  ranked by score and matched class-aware at IoU >= 0.5, one to one;
- per image: AP@0.5 (all-point interpolated precision-recall area, the COCO/Ultralytics mAP50
  computation) pooled over classes; an image where the reference detects nothing scores 1.0 unless
  the candidate adds a box >= 0.25 (then 0). The task metric is the mean over images (mAP50-style).

Beside it: recall of the reference's boxes at the same 0.25 threshold (matched down to half of it,
so score jitter at the threshold is not a miss), and the mean IoU of the matched boxes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DETECTION_SCORE = 0.25
VAL_SCORE = 0.001
MAX_DET = 300
NMS_IOU = 0.7
MATCH_IOU = 0.5


@dataclass(frozen=True)
class Detections:
    boxes: np.ndarray  # (n, 4) xyxy
    scores: np.ndarray  # (n,)
    classes: np.ndarray  # (n,)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: (len(a), len(b))."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def decode(head: np.ndarray, score: float = DETECTION_SCORE) -> Detections:
    """One image's head (4 + classes, anchors) -> detections above `score` after class-aware NMS."""
    head = np.asarray(head, np.float64)
    cls_scores = head[4:]
    best, cls = cls_scores.max(axis=0), cls_scores.argmax(axis=0)
    keep = np.flatnonzero(best >= score)
    keep = keep[np.argsort(-best[keep], kind="stable")][:3000]
    cx, cy, w, h = (head[i, keep] for i in range(4))
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    scores, classes = best[keep], cls[keep]
    chosen: list[int] = []
    suppressed = np.zeros(len(keep), bool)
    ious = _iou(boxes, boxes) if len(keep) else np.zeros((0, 0))
    for i in range(len(keep)):
        if suppressed[i]:
            continue
        chosen.append(i)
        suppressed |= (ious[i] > NMS_IOU) & (classes == classes[i])
    idx = np.asarray(chosen[:MAX_DET], dtype=np.int64)
    return Detections(boxes[idx].reshape(-1, 4), scores[idx], classes[idx])


def _match(ref: Detections, cand: Detections) -> tuple[list[float], np.ndarray]:
    """Greedy one-to-one matching, reference boxes best-scoring first: matched IoUs, and which
    candidate boxes were taken."""
    taken = np.zeros(len(cand.scores), bool)
    ious = _iou(ref.boxes, cand.boxes) if len(ref.scores) and len(cand.scores) else np.zeros((len(ref.scores), 0))
    matched = []
    for i in range(len(ref.scores)):
        ok = (~taken) & (cand.classes == ref.classes[i]) & (ious[i] >= MATCH_IOU) if ious.shape[1] else np.zeros(0, bool)
        if ok.any():
            j = int(np.argmax(np.where(ok, ious[i], -1.0)))
            taken[j] = True
            matched.append(float(ious[i, j]))
    return matched, taken


def image_ap50(out: np.ndarray, ref: np.ndarray) -> float:
    """AP@0.5 of one image's candidate head against the reference's detections (see module docstring)."""
    truth = decode(ref, DETECTION_SCORE)
    if not len(truth.scores):
        return 0.0 if len(decode(out, DETECTION_SCORE).scores) else 1.0
    cand = decode(out, VAL_SCORE)  # sorted by score, best first
    hits = np.zeros(len(cand.scores), bool)
    used = np.zeros(len(truth.scores), bool)
    ious = _iou(cand.boxes, truth.boxes) if len(cand.scores) else np.zeros((0, len(truth.scores)))
    for i in range(len(cand.scores)):
        ok = (~used) & (truth.classes == cand.classes[i]) & (ious[i] >= MATCH_IOU)
        if ok.any():
            j = int(np.argmax(np.where(ok, ious[i], -1.0)))
            used[j] = hits[i] = True
    tp = np.cumsum(hits)
    rec = np.concatenate([[0.0], tp / len(truth.scores), [1.0]])
    prec = np.concatenate([[1.0], tp / np.arange(1, len(hits) + 1), [0.0]])
    prec = np.maximum.accumulate(prec[::-1])[::-1]  # the precision envelope
    return float(np.sum(np.diff(rec) * prec[1:]))


def box_agreement(outputs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-image AP@0.5 of a batch of heads against the reference's detections."""
    return np.asarray([image_ap50(o, r) for o, r in zip(outputs, reference, strict=True)])


def recall(outputs: np.ndarray, reference: np.ndarray) -> tuple[float, float, int]:
    """(recall of the reference's boxes >= 0.25, mean IoU of the matched boxes, reference boxes)."""
    found, total, ious = 0, 0, []
    for o, r in zip(outputs, reference, strict=True):
        matched, _ = _match(decode(r, DETECTION_SCORE), decode(o, DETECTION_SCORE / 2))
        found += len(matched)
        ious += matched
    total = sum(len(decode(r).scores) for r in reference)
    return (1.0 if total == 0 else found / total), (float(np.mean(ious)) if ious else 1.0), total
