"""The parity gate: the bundle and the training pipeline, run on the same raw eval rows, must agree.

The bundle side is what a device runs: the agent's own RawPipeline (agent/features.py) on
`preprocess.onnx`, then the chosen artifact in its runtime. The training side is the user's
pipeline (`transform`, or `--training-transform module:function`) and the source model. Features
are compared column by column against `atol + rtol * |training value|`; the first failure names
the raw feature, the transformed column and the row. The end-to-end output difference against
the source model is measured and recorded (quantization error is gated by the quality gates).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compiler.gates import GateResult
from compiler.preprocess import PREPROCESS_FILE, Preprocess, RawColumns

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-4


@dataclass
class Parity:
    gate: GateResult
    feature_max_abs_diff: float
    output_max_abs_diff: float | None
    rows: int

    def to_manifest(self, atol: float, rtol: float) -> dict[str, Any]:
        return {"rows": self.rows, "atol": atol, "rtol": rtol,
                "feature_max_abs_diff": float(self.feature_max_abs_diff),
                "output_max_abs_diff": None if self.output_max_abs_diff is None
                else float(self.output_max_abs_diff)}


def _column_label(pre: Preprocess, col: int, width: int) -> tuple[str, str]:
    """(raw feature, transformed column) for column `col` of the model input."""
    if pre.raw_feature_of and col < len(pre.raw_feature_of):
        return pre.raw_feature_of[col], pre.column_names[col]
    name = pre.schema[0]["name"] if len(pre.schema) == 1 else "input"
    shape = pre.schema[0].get("shape") if len(pre.schema) == 1 else None
    element = f"{name}[{', '.join(map(str, np.unravel_index(col, shape)))}]" if shape else f"{name}[{col}]"
    return name, element


def bundle_features(pre: Preprocess, raw: RawColumns) -> np.ndarray:
    """Run the shipped graph exactly as the agent does, on the raw rows."""
    from agent.features import RawPipeline

    with tempfile.TemporaryDirectory(prefix="edgefleet-parity-") as tmp:
        graph = Path(tmp) / PREPROCESS_FILE
        graph.write_bytes(pre.onnx_bytes)
        rp = RawPipeline({"features": pre.schema, "output": pre.output_name}, graph)
        cols, _ = rp.columns({n: raw[n] for n in rp.names})
        return rp.transform(cols)[0][pre.output_name]


def check_parity(pre: Preprocess, raw: RawColumns, *, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                 run_model: Any = None, reference_outputs: np.ndarray | None = None) -> Parity:
    """Compare the bundle's features (and, given `run_model`, its outputs) with the training side."""
    got = bundle_features(pre, raw).astype(np.float64)
    want = pre.reference(raw)
    n = len(want)
    got2, want2 = got.reshape(n, -1), want.reshape(n, -1)
    if got2.shape != want2.shape:
        gate = GateResult("parity", float("inf"), atol, False,
                          f"the bundle's preprocessing makes {got2.shape[1]} columns, training made {want2.shape[1]}")
        return Parity(gate, float("inf"), None, n)
    diff = np.abs(got2 - want2)
    both_nan = np.isnan(got2) & np.isnan(want2)
    diff[both_nan] = 0.0
    diff[np.isnan(diff)] = np.inf
    allowed = atol + rtol * np.abs(np.nan_to_num(want2))
    excess = diff / allowed
    max_diff = float(diff.max()) if diff.size else 0.0
    out_diff = None
    if run_model is not None and reference_outputs is not None:
        outs = np.asarray(run_model({pre.output_name: got.reshape(want.shape).astype(np.float32)}), dtype=np.float64)
        out_diff = float(np.abs(outs.reshape(n, -1) - np.asarray(reference_outputs).reshape(n, -1)).max())
    if diff.size and excess.max() > 1.0:
        row, col = np.unravel_index(int(np.argmax(excess)), excess.shape)
        feature, column = _column_label(pre, int(col), got2.shape[1])
        bad_rows = int((excess > 1.0).any(axis=1).sum())
        detail = (f"feature {feature!r} (column {column}) row {int(row)}: bundle {got2[row, col]:.6g} vs training "
                  f"{want2[row, col]:.6g} (abs diff {diff[row, col]:.3g} > tolerance {allowed[row, col]:.3g}; "
                  f"{bad_rows}/{n} rows differ)")
        return Parity(GateResult("parity", max_diff, atol, False, detail), max_diff, out_diff, n)
    detail = f"{n} raw rows: features max abs diff {max_diff:.3g} (atol {atol:g}, rtol {rtol:g})"
    if out_diff is not None:
        detail += f"; outputs max abs diff vs source model {out_diff:.3g}"
    return Parity(GateResult("parity", max_diff, atol, True, detail), max_diff, out_diff, n)
