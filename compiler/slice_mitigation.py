"""Mitigate a failed slice gate instead of only refusing the build (issue 14 item 7).

Static INT8 learns its activation ranges from the first `calibration_samples` calibration rows.
When those rows under-represent a slice (a site, a sensor, a population) the ranges clip that
slice's activations and its accuracy falls while the mean barely moves. Slice-balanced
calibration re-orders the calibration set round-robin over the slices, so the prefix the
quantizer reads holds every slice equally; the candidate is rebuilt with it and kept only if it
passes the gates. The lineage records what was tried and what it changed.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from agent.canonical import file_sha256
from compiler.candidates import CandidateResult, Evaluator, try_candidate
from compiler.data import Dataset
from compiler.gates import failed
from compiler.passes import Artifact, PassContext

SLICE_GATES = frozenset({"max-slice-gap-increase", "max-slice-gap", "min-slice-accuracy"})
CALIBRATED = frozenset({"int8"})  # precisions whose ranges come from calibration data


def balanced_order(slices: np.ndarray, seed: int = 0) -> np.ndarray:
    """Row indices interleaved round-robin over slices (each slice's rows in a seeded shuffle)."""
    rng = np.random.default_rng(seed)
    groups = [rng.permutation(np.flatnonzero(slices == s)) for s in np.unique(slices)]
    longest = max(len(g) for g in groups)
    return np.array([g[i] for i in range(longest) for g in groups if i < len(g)], dtype=np.int64)


def slice_balanced(calib: Dataset) -> Dataset | None:
    """The calibration set re-ordered by slice; None when it carries no slice ids (the evaluation
    rows are never used to calibrate: they judge the result)."""
    if calib.slices is None or len(np.unique(calib.slices)) < 2:
        return None
    idx = balanced_order(np.asarray(calib.slices))
    return calib.select(idx)


def _slice_summary(res: CandidateResult) -> dict[str, Any]:
    q = res.quality
    return {} if q is None else {"slices": q.slices, "worst_slice": q.worst_slice, "slice_gap": q.slice_gap,
                                 "metric": q.metric}


def mitigate_slices(fmt: str, ctx: PassContext, work: Path, first: tuple[CandidateResult, Artifact | None],
                    evaluate: Evaluator) -> tuple[CandidateResult, Artifact | None]:
    """Rebuild a calibrated candidate that failed a slice gate with slice-balanced calibration;
    keep the rebuilt one only if it passes every gate."""
    res, art = first
    bad = {g.gate for g in failed(res.gates)}
    if art is None or res.error or res.precision not in CALIBRATED or not bad & SLICE_GATES:
        return first
    calib = slice_balanced(ctx.calib)
    if calib is None:
        return first
    cand, cart = try_candidate(fmt, res.precision, replace(ctx, calib=calib), work / "slice-balanced", evaluate)
    record = {"pass": "slice-mitigation", "input_sha256": file_sha256(art.entry_path),
              "config": {"method": "slice-balanced-calibration", "samples": min(ctx.calibration_samples, calib.n),
                         "per_slice_rows": {str(s): int(n) for s, n in zip(
                             *np.unique(calib.slices[:ctx.calibration_samples], return_counts=True), strict=True)},
                         "failed_gates": sorted(bad), "why": [g.detail for g in failed(res.gates)],
                         "before": _slice_summary(res), "after": _slice_summary(cand)}}
    if cart is None or not cand.passed:
        if art is not None:  # the original stays; what was tried is on record
            art.lineage.insert(0, {**record, "output_sha256": None, "kept": False})
        return first
    cart.lineage.insert(0, {**record, "output_sha256": file_sha256(cart.entry_path), "kept": True})
    return cand, cart
