"""The raw-input contract: the training-time feature pipeline shipped inside the bundle.

Two sources, one result (`Preprocess`): a fitted scikit-learn pipeline converted with skl2onnx
(`--sklearn-pipeline pipeline.joblib`) or a torch `preprocess` module exported to ONNX
(`--preprocess module:function`, or a `preprocess` attribute on the `--torch` model). Either
becomes `preprocess.onnx`, a first graph that maps named raw features to the model's input
tensor. The agent runs it with onnxruntime in front of the model for every format (ONNX,
OpenVINO, TFLite), so the quantized model, its gates and its drift baseline stay on the same
tensors training produced. The feature schema (names, dtypes, units, ranges, vocabularies) is
derived from the pipeline and the raw eval rows and can be overridden by a TOML file.

A pickled pipeline is code: `--sklearn-pipeline` is trusted build input, like `--torch`.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compiler.errors import CompileInputError

PREPROCESS_FILE = "preprocess.onnx"
RawColumns = dict[str, np.ndarray]  # one array per raw feature, leading sample axis


@dataclass
class Preprocess:
    """What the bundle ships in front of the model and what the parity gate compares it with."""

    kind: str  # "sklearn" or "torch"
    onnx_bytes: bytes
    output_name: str  # the model input it feeds
    schema: list[dict[str, Any]]
    reference: Callable[[RawColumns], np.ndarray]  # the training pipeline: raw -> model input
    sha256: str  # of the pipeline as given (pickle bytes or the exported graph)
    column_names: list[str] = field(default_factory=list)  # transformed columns (for naming the culprit)
    raw_feature_of: list[str] = field(default_factory=list)  # raw feature behind each transformed column


# ---------------------------------------------------------------------------------------------- raw rows


def load_raw_rows(path: Path | str) -> RawColumns:
    """Raw eval rows: a CSV with a header (numeric columns -> float, empty = missing) or an .npz."""
    p = Path(path)
    if not p.is_file():
        raise CompileInputError(f"--raw-eval {p} does not exist")
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in z.files}
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CompileInputError(f"--raw-eval {p}: {exc}") from exc
    if len(rows) < 2:
        raise CompileInputError(f"--raw-eval {p}: needs a header row and at least one data row")
    header, body = rows[0], rows[1:]
    out: RawColumns = {}
    for j, name in enumerate(header):
        values = [r[j] if j < len(r) else "" for r in body]
        try:
            out[name] = np.array([float(v) if v.strip() else np.nan for v in values], dtype=np.float64)
        except ValueError:
            out[name] = np.array(values, dtype=object)
    return out


def split_labels(raw: RawColumns) -> tuple[RawColumns, np.ndarray | None, np.ndarray | None]:
    """`labels`/`label` and `slices` columns are eval metadata, not features."""
    raw = dict(raw)
    labels = raw.pop("labels", raw.pop("label", None))
    slices = raw.pop("slices", None)
    return raw, labels, slices


def _frame(raw: RawColumns, names: list[str]) -> Any:
    import pandas as pd

    missing = [n for n in names if n not in raw]
    if missing:
        raise CompileInputError(f"raw eval rows lack feature(s) {', '.join(missing)}")
    return pd.DataFrame({n: raw[n] for n in names})


# ---------------------------------------------------------------------------------------------- sklearn


def load_sklearn_pipeline(path: Path | str) -> tuple[Any, str]:
    """Unpickle a fitted pipeline (trusted build input: a pickle runs code) and hash its bytes."""
    p = Path(path)
    if not p.is_file():
        raise CompileInputError(f"--sklearn-pipeline {p} does not exist")
    data = p.read_bytes()
    try:
        import joblib

        pipe = joblib.load(p)
    except Exception as exc:  # a corrupt or foreign pickle raises anything
        raise CompileInputError(f"--sklearn-pipeline {p}: cannot load ({type(exc).__name__}: {exc})") from exc
    if not hasattr(pipe, "transform"):
        raise CompileInputError(f"--sklearn-pipeline {p}: {type(pipe).__name__} has no transform()")
    return pipe, hashlib.sha256(data).hexdigest()


def _walk(est: Any) -> list[Any]:
    """The estimators inside a Pipeline / ColumnTransformer step (depth first)."""
    steps = getattr(est, "steps", None)
    if steps is not None:
        return [e for _, s in steps for e in _walk(s)]
    return [est]


def _column_roles(pipe: Any) -> dict[str, dict[str, Any]]:
    """Per raw column: categories (from a OneHotEncoder) and whether an imputer fills it."""
    roles: dict[str, dict[str, Any]] = {}
    cts = [e for e in _walk(pipe) if hasattr(e, "transformers_")]
    for ct in cts:
        for _name, trans, cols in ct.transformers_:
            if isinstance(trans, str):
                continue
            cols = list(cols) if not isinstance(cols, str) else [cols]
            for est in _walk(trans):
                kind = type(est).__name__
                for i, c in enumerate(cols):
                    r = roles.setdefault(str(c), {})
                    if kind == "OneHotEncoder":
                        r["categories"] = [str(v) for v in est.categories_[i]]
                    elif "Imputer" in kind:
                        r["imputed"] = True
    return roles


def _raw_features_of(pipe: Any, names: list[str], n_out: int) -> tuple[list[str], list[str]]:
    """Transformed column names and the raw feature each comes from (ColumnTransformer naming)."""
    try:
        out = [str(v) for v in pipe.get_feature_names_out()]
    except Exception:
        out = [f"f{i}" for i in range(n_out)]
    raw_of = []
    for col in out:
        bare = col.split("__", 1)[-1]
        match = max((n for n in names if bare == n or bare.startswith(n + "_")), key=len, default=bare)
        raw_of.append(match)
    return out, raw_of


def from_sklearn(pipe: Any, sha256: str, raw: RawColumns, output_name: str, opset: int) -> Preprocess:
    """Convert with skl2onnx (one named graph input per raw feature) and derive the schema."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    names = [str(n) for n in getattr(pipe, "feature_names_in_", list(raw))]
    frame = _frame(raw, names)
    types = [(n, StringTensorType([None, 1]) if raw[n].dtype == object else FloatTensorType([None, 1]))
             for n in names]
    try:
        onx = convert_sklearn(pipe, initial_types=types, target_opset={"": min(opset, 21), "ai.onnx.ml": 3})
    except Exception as exc:  # skl2onnx raises RuntimeError/NotImplementedError for unsupported steps
        raise CompileInputError(f"--sklearn-pipeline: skl2onnx cannot convert it ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    # skl2onnx sanitises names ("mean radius" -> "mean_radius"): devices send the pipeline's names.
    renames = {gi.name: n for gi, n in zip(onx.graph.input, names, strict=True)}
    renames[onx.graph.output[0].name] = output_name
    for node in onx.graph.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
        node.output[:] = [renames.get(o, o) for o in node.output]
    for value in [*onx.graph.input, *onx.graph.output]:
        value.name = renames.get(value.name, value.name)

    def reference(cols: RawColumns) -> np.ndarray:
        out = pipe.transform(_frame(cols, names))
        return np.asarray(out.toarray() if hasattr(out, "toarray") else out, dtype=np.float64)

    n_out = reference({n: raw[n][:2] for n in names}).shape[1]
    col_names, raw_of = _raw_features_of(pipe, names, n_out)
    roles = _column_roles(pipe)
    schema = []
    for n in names:
        r = roles.get(n, {})
        entry: dict[str, Any] = {"name": n, "dtype": "string" if raw[n].dtype == object else "float32",
                                 "unit": "", "nullable": bool(r.get("imputed", False))}
        if "categories" in r:
            entry["categories"] = r["categories"]
        elif raw[n].dtype != object:
            vals = np.asarray(frame[n], dtype=np.float64)
            if np.isfinite(vals).any():
                entry["min"], entry["max"] = float(np.nanmin(vals)), float(np.nanmax(vals))
        schema.append(entry)
    return Preprocess("sklearn", onx.SerializeToString(), output_name, schema, reference, sha256, col_names, raw_of)


# ---------------------------------------------------------------------------------------------- torch


def from_torch(module: Any, raw: RawColumns, output_name: str, opset: int,
               reference: Callable[[RawColumns], np.ndarray] | None = None) -> Preprocess:
    """Export a torch preprocess module (one tensor in, the model's input out) to its own graph."""
    import io

    import torch

    if len(raw) != 1:
        raise CompileInputError(f"a torch preprocess module takes one raw tensor; the raw eval has {sorted(raw)}")
    (name, x), = raw.items()
    module = module.eval()
    buf = io.BytesIO()
    try:
        torch.onnx.export(module, (torch.from_numpy(np.asarray(x[:2], dtype=np.float32)),), buf, dynamo=False,
                          input_names=[name], output_names=[output_name], opset_version=min(opset, 18),
                          dynamic_axes={name: {0: "batch"}, output_name: {0: "batch"}})
    except Exception as exc:
        raise CompileInputError(f"preprocess module does not export to ONNX: {type(exc).__name__}: {exc}") from exc

    def run_torch(cols: RawColumns) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.asarray(cols[name], dtype=np.float32))).numpy().astype(np.float64)

    data = buf.getvalue()
    schema = [{"name": name, "dtype": "float32", "unit": "", "shape": [int(d) for d in x.shape[1:]],
               "nullable": False, "min": float(np.nanmin(x)), "max": float(np.nanmax(x))}]
    return Preprocess("torch", data, output_name, schema, reference or run_torch, hashlib.sha256(data).hexdigest())


# ---------------------------------------------------------------------------------------------- schema


SCHEMA_KEYS = {"unit": str, "min": (int, float), "max": (int, float), "categories": list, "nullable": bool,
               "dtype": str}


def apply_overrides(schema: list[dict[str, Any]], overrides: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """`[features.<name>]` tables of a TOML file replace derived unit/min/max/categories/nullable."""
    table = overrides.get("features", overrides)
    by_name = {f["name"]: f for f in schema}
    for name, values in table.items():
        if name not in by_name:
            raise CompileInputError(f"{source}: feature {name!r} is not an input of the pipeline "
                                    f"({', '.join(by_name)})")
        if not isinstance(values, dict):
            raise CompileInputError(f"{source}: [features.{name}] must be a table")
        for key, value in values.items():
            if key not in SCHEMA_KEYS or not isinstance(value, SCHEMA_KEYS[key]) or isinstance(value, bool) != (
                    SCHEMA_KEYS[key] is bool):
                raise CompileInputError(f"{source}: [features.{name}] {key} = {value!r} is not one of "
                                        f"{', '.join(SCHEMA_KEYS)} with the right type")
            by_name[name][key] = [str(v) for v in value] if key == "categories" else value
    return schema


def load_schema_overrides(path: Path | str | None) -> dict[str, Any]:
    if not path:
        return {}
    from agent.toml_files import read_toml

    return read_toml(Path(path), CompileInputError)


def preprocess_manifest(pre: Preprocess, parity: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `preprocess` block (read by agent/features.py)."""
    return {"kind": pre.kind, "entrypoint": PREPROCESS_FILE, "output": pre.output_name,
            "pipeline_sha256": pre.sha256, "features": pre.schema, "parity": parity}
