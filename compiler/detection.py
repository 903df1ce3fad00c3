"""Detection agreement: the reference's real detections, matched box by box in the candidate's output.

Why not compare raw anchors: on images with nothing the detector knows, its "most confident"
anchors are noise boxes (scores ~0.1) whose coordinates INT8 may move freely without changing a
single detection. What a user sees are the boxes above the confidence threshold after NMS, so the
score compares those, as a detection benchmark does with ground truth, using the FP32 (reference)
detections as the ground truth:

- decode a YOLO-style head (batch x (4 box + classes) x anchors, boxes cx, cy, w, h, class scores
  already activated), keep boxes scoring >= `DETECTION_SCORE` and run class-aware NMS (IoU 0.7,
  the Ultralytics predict defaults: conf 0.25, iou 0.7);
- each reference detection is matched, best-scoring first, to the unmatched candidate box of the
  same class with the highest IoU >= 0.5 (the mAP@0.5 criterion); a missed box scores 0;
- a candidate box above the threshold that matches no reference box is a false detection, also 0;
- per image: sum of matched IoUs / (reference boxes + false detections); 1.0 when both are empty.

Score jitter at the threshold is not a miss: candidates are matched down to half the threshold, and
a candidate box only counts as false when no reference box (also down to half the threshold) is
there. Recall (matched / reference boxes) is reported beside the score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DETECTION_SCORE = 0.25
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
    keep = keep[np.argsort(-best[keep], kind="stable")]
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
    idx = np.asarray(chosen, dtype=np.int64)
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


def image_agreement(out: np.ndarray, ref: np.ndarray, score: float = DETECTION_SCORE) -> tuple[float, int, int]:
    """(score, reference boxes, matched boxes) for one image's heads."""
    r_hi, c_lo = decode(ref, score), decode(out, score / 2)
    matched, _ = _match(r_hi, c_lo)
    c_hi, r_lo = decode(out, score), decode(ref, score / 2)
    _, explained = _match(r_lo, c_hi)  # candidate boxes some reference box accounts for
    false = int((~explained).sum())
    denominator = len(r_hi.scores) + false
    return (1.0 if denominator == 0 else sum(matched) / denominator), len(r_hi.scores), len(matched)


def box_agreement(outputs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-image agreement of a batch of heads with the reference's heads (see module docstring)."""
    return np.asarray([image_agreement(o, r)[0] for o, r in zip(outputs, reference, strict=True)])


def recall(outputs: np.ndarray, reference: np.ndarray) -> tuple[float, int]:
    """Share of the reference's detections the candidate keeps (same class, IoU >= 0.5), and how many."""
    counts = [image_agreement(o, r)[1:] for o, r in zip(outputs, reference, strict=True)]
    total = sum(n for n, _ in counts)
    return (1.0 if total == 0 else sum(m for _, m in counts) / total), total
