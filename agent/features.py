"""Raw inputs by feature name: validation against the bundle's feature schema, then its preprocess graph.

A bundle built with a training pipeline (compiler/preprocess.py) ships `preprocess.onnx` and a
`preprocess` manifest block: raw feature names, dtypes, units, allowed ranges, vocabularies. The
agent accepts `{"age": 31, "city": "oslo"}` (one row), a list of such rows, or a mapping of
columns, counts schema violations per feature (missing, out_of_range, unknown_category: a
data-quality signal kept apart from drift), and runs the graph with onnxruntime in front of the
model, whatever the model's own runtime. Violations do not refuse a request: the pipeline's
imputers and encoders handle them as they did in training; a value of the wrong type does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.spec_check import InputError

VIOLATION_KINDS = ("missing", "out_of_range", "unknown_category")
Violations = dict[str, dict[str, int]]


def _column(name: str, values: Any, spec: dict[str, Any], n: int | None) -> np.ndarray:
    """One raw feature as the graph wants it: strings (N,1) object, numbers (N,1) float32, tensors (N,*shape)."""
    if spec.get("dtype") == "string":
        arr = np.asarray(values, dtype=object).reshape(-1)
        bad = [v for v in arr if v is not None and not isinstance(v, str)]
        if bad:
            raise InputError(f"feature {name!r}: expected a string, got {type(bad[0]).__name__} {bad[0]!r}")
        return np.array(["" if v is None else v for v in arr], dtype=object).reshape(-1, 1)
    shape = spec.get("shape")
    try:
        arr = np.asarray([np.nan if v is None else v for v in values] if isinstance(values, list) and not shape
                         else values, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(f"feature {name!r}: expected a number ({exc})") from exc
    if shape:
        want = tuple(int(d) for d in shape)
        if arr.shape == want:
            arr = arr[None]
        if arr.shape[1:] != want:
            raise InputError(f"feature {name!r}: expected shape (N, {', '.join(map(str, want))}), got {arr.shape}")
        return np.ascontiguousarray(arr)
    return arr.reshape(-1, 1)


def _one_value(v: Any, spec: dict[str, Any]) -> dict[str, int]:
    """The single-row fast path (plain Python: numpy reductions cost more than the check)."""
    if isinstance(v, str):
        if v == "":
            return {"missing": 1}
        cats = spec.get("categories")
        return {"unknown_category": 1} if cats is not None and v not in cats else {}
    if v != v:  # NaN
        return {"missing": 1}
    lo, hi = spec.get("min"), spec.get("max")
    return {"out_of_range": 1} if (lo is not None and v < lo) or (hi is not None and v > hi) else {}


def _violations(name: str, col: np.ndarray, spec: dict[str, Any]) -> dict[str, int]:
    if col.size == 1:
        return _one_value(col.item(), spec)
    out: dict[str, int] = {}
    if col.dtype == object:
        missing = col == ""
        if spec.get("categories") is not None:
            known = set(spec["categories"])
            out["unknown_category"] = int(sum(1 for v, m in zip(col.reshape(-1), missing.reshape(-1), strict=True)
                                              if not m and v not in known))
    else:
        flat = col.reshape(len(col), -1)
        missing = np.isnan(flat).any(axis=1)
        lo, hi = spec.get("min"), spec.get("max")
        if lo is not None or hi is not None:  # NaN compares False: counted as missing only
            bad = np.zeros(len(flat), dtype=bool)
            if lo is not None:
                bad |= (flat < lo).any(axis=1)
            if hi is not None:
                bad |= (flat > hi).any(axis=1)
            out["out_of_range"] = int(bad.sum())
    out["missing"] = int(np.asarray(missing).sum())
    return {k: v for k, v in out.items() if v}


class RawPipeline:
    """The bundle's feature schema and preprocess graph, loaded once per model."""

    def __init__(self, block: Mapping[str, Any], graph_path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        self.features: list[dict[str, Any]] = list(block["features"])
        self.names = [f["name"] for f in self.features]
        self.name_set = frozenset(self.names)
        self.output = str(block["output"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        self.session = ort.InferenceSession(str(graph_path), opts, providers=["CPUExecutionProvider"])
        self.graph_inputs = {i.name for i in self.session.get_inputs()}

    def accepts(self, inputs: Any) -> bool:
        """Raw rows (a list of mappings) or a mapping keyed by raw feature names, not by tensor names."""
        if isinstance(inputs, Sequence) and not isinstance(inputs, (str, bytes)) and inputs \
                and all(isinstance(r, Mapping) for r in inputs):
            return True
        return isinstance(inputs, Mapping) and bool(inputs) and self.name_set.issuperset(inputs) \
            and self.output not in inputs

    def columns(self, inputs: Any) -> tuple[dict[str, np.ndarray], Violations]:
        """Validate and shape raw inputs; unknown feature names are refused (a typo must not pass silently)."""
        rows = inputs if not isinstance(inputs, Mapping) else None
        given = set().union(*(r.keys() for r in rows)) if rows is not None else set(inputs)
        unknown = sorted(str(k) for k in given - self.name_set)
        if unknown:
            raise InputError(f"unknown feature(s) {', '.join(unknown)}; the model takes {', '.join(self.names)}")
        cols: dict[str, np.ndarray] = {}
        n = len(rows) if rows is not None else None
        for spec in self.features:
            name = spec["name"]
            if rows is not None:
                values: Any = [r.get(name) for r in rows]
            else:
                v = inputs.get(name)
                scalar = v is None or np.ndim(v) == 0
                values = [v] if scalar and not spec.get("shape") else v
                if v is None and spec.get("shape"):
                    raise InputError(f"feature {name!r} is missing")
            cols[name] = _column(name, values, spec, n)
        sizes = {len(c) for c in cols.values()}
        if len(sizes) > 1:
            raise InputError(f"features have different row counts: {sorted(sizes)}")
        bad = {spec["name"]: v for spec in self.features if (v := _violations(spec["name"], cols[spec["name"]], spec))}
        return cols, bad

    def transform(self, inputs: Any) -> tuple[dict[str, np.ndarray], Violations]:
        """Raw inputs -> {model input name: tensor}, plus the violations counted on the way."""
        cols, bad = self.columns(inputs)
        try:
            out = self.session.run([self.output], {k: v for k, v in cols.items() if k in self.graph_inputs})[0]
        except Exception as exc:  # onnxruntime raises its own exception types for bad feeds
            raise InputError(f"raw inputs rejected by the preprocess graph: {exc}") from exc
        return {self.output: np.asarray(out, dtype=np.float32)}, bad


def load_raw_pipeline(manifest: Mapping[str, Any], model_dir: Path, threads: int = 1) -> RawPipeline | None:
    """The RawPipeline of a bundle that ships one, else None (tensor inputs only)."""
    block = manifest.get("preprocess")
    if not block:
        return None
    return RawPipeline(block, Path(model_dir) / block["entrypoint"], threads)


def merge_violations(into: Violations, new: Violations) -> None:
    for name, kinds in new.items():
        slot = into.setdefault(name, {})
        for kind, count in kinds.items():
            slot[kind] = slot.get(kind, 0) + count


def binary_request(arrays: dict[str, np.ndarray], header: Mapping[str, Any]) -> Any:
    """An EFT1 message carries numeric features as tensors; string features (and whole rows) ride
    in its JSON header: {"rows": [{...}, ...]} or {"features": {name: [values]}} next to the tensors."""
    rows = header.get("rows")
    if isinstance(rows, list):
        return rows
    extra = header.get("features")
    if isinstance(extra, dict):
        return {**extra, **arrays}
    return arrays
