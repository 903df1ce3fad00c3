"""Calibration and evaluation data: loading (.npz or a Python callable) and validation.

Validation runs before any expensive step so a build pipeline fails in seconds with a message
that names the key, the sample and what was expected, instead of deep inside a quantizer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compiler.errors import CompileInputError
from compiler.loading import load_callable

RESERVED_KEYS = ("labels", "slices")


@dataclass
class Dataset:
    """Named model inputs (each with a leading sample axis), optional labels and slice ids."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    slices: np.ndarray | None = None
    source: str = "<memory>"

    @property
    def n(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def take(self, count: int) -> Dataset:
        """The first `count` samples (calibration uses a small prefix)."""
        count = min(count, self.n)
        return Dataset({k: v[:count] for k, v in self.inputs.items()},
                       None if self.labels is None else self.labels[:count],
                       None if self.slices is None else self.slices[:count], self.source)

    def batches(self, size: int = 1) -> list[dict[str, np.ndarray]]:
        return [{k: v[i:i + size] for k, v in self.inputs.items()} for i in range(0, self.n, size)]

    def sha256(self) -> str:
        """Content hash (names, dtypes, shapes, bytes) for the cache key and provenance."""
        h = hashlib.sha256()
        for key, arr in sorted({**self.inputs, "__labels": self.labels, "__slices": self.slices}.items()):
            if arr is None:
                continue
            a = np.ascontiguousarray(arr)
            h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes() if a.dtype != object else repr(a.tolist()).encode())
        return h.hexdigest()


def infer_input_names(keys: Sequence[str]) -> list[str]:
    """A single 'inputs' array feeds the input called 'input'; otherwise every non-reserved key is one."""
    if "inputs" in keys:
        return ["input"]
    return [k for k in keys if k not in RESERVED_KEYS]


def _from_mapping(data: Mapping[str, Any], input_names: Sequence[str] | None, source: str) -> Dataset:
    keys = set(data)
    if not input_names:
        input_names = infer_input_names(list(data))
    if "inputs" in keys:
        if len(input_names) > 1:
            raise CompileInputError(
                f"{source}: the model has {len(input_names)} inputs ({', '.join(input_names)}); "
                "store one array per input name instead of a single 'inputs' key")
        inputs = {input_names[0] if input_names else "input": np.asarray(data["inputs"])}
    else:
        missing = [n for n in input_names if n not in keys]
        if missing or not input_names:
            raise CompileInputError(
                f"{source}: no 'inputs' key and no array named for the model input(s) "
                f"{', '.join(missing or input_names) or '?'}; found keys {', '.join(sorted(keys)) or 'none'}")
        inputs = {n: np.asarray(data[n]) for n in input_names}
    labels = np.asarray(data["labels"]) if "labels" in keys and data["labels"] is not None else None
    slices = np.asarray(data["slices"]) if "slices" in keys and data["slices"] is not None else None
    return Dataset(inputs, labels, slices, source)


def load_dataset(spec: str | Path | Dataset | Mapping[str, Any], input_names: Sequence[str] | None = None) -> Dataset:
    """Read a `.npz` path, a `module:function` returning a mapping/Dataset, or pass a Dataset through."""
    if isinstance(spec, Dataset):
        if input_names and len(input_names) == 1 and len(spec.inputs) == 1 and input_names[0] not in spec.inputs:
            return Dataset({input_names[0]: next(iter(spec.inputs.values()))}, spec.labels, spec.slices, spec.source)
        return spec
    if isinstance(spec, Mapping):
        return _from_mapping(spec, input_names, "<mapping>")
    text = str(spec)
    path = Path(text)
    if path.suffix == ".npz" or path.exists():
        if not path.is_file():
            raise CompileInputError(f"data file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise CompileInputError(f"{path} is not a readable .npz file: {exc}") from exc
        return _from_mapping(data, input_names, str(path))
    if ":" in text:
        result = load_callable(text, "data")()
        if isinstance(result, Dataset):
            return result
        if not isinstance(result, Mapping):
            raise CompileInputError(f"{text} returned {type(result).__name__}; expected a dict or compiler.data.Dataset")
        return _from_mapping(result, input_names, text)
    raise CompileInputError(f"data {text!r} is neither an existing .npz file nor a module:function")


def validate_dataset(
    ds: Dataset,
    input_specs: Sequence[Mapping[str, Any]],
    *,
    task: str,
    n_classes: int | None = None,
    need_labels: bool = False,
    min_slice_size: int = 5,
    role: str = "data",
) -> None:
    """Shapes, dtypes, NaNs, label range and slice sizes; raise CompileInputError naming the problem."""
    where = f"{role} ({ds.source})"
    n = None
    for spec in input_specs:
        name = spec["name"]
        if name not in ds.inputs:
            raise CompileInputError(f"{where}: no array for model input {name!r}")
        arr = ds.inputs[name]
        if arr.ndim == 0 or arr.shape[0] == 0:
            raise CompileInputError(f"{where}: input {name!r} is empty")
        if n is None:
            n = arr.shape[0]
        elif arr.shape[0] != n:
            raise CompileInputError(f"{where}: input {name!r} has {arr.shape[0]} samples, others have {n}")
        want = list(spec["shape"])
        got = list(arr.shape)
        if len(want) != len(got):
            raise CompileInputError(f"{where}: input {name!r} has shape {tuple(got)}, the model expects rank "
                                    f"{len(want)} {tuple(want)}")
        for axis, (w, g) in enumerate(zip(want, got, strict=True)):
            if isinstance(w, int) and axis > 0 and w != g:
                raise CompileInputError(f"{where}: input {name!r} has shape {tuple(got)}, the model expects "
                                        f"{tuple(want)} (axis {axis} is {g}, expected {w})")
        kind = np.dtype(spec["dtype"]).kind
        if arr.dtype.kind not in "biuf":
            raise CompileInputError(f"{where}: input {name!r} has dtype {arr.dtype}, expected {spec['dtype']}")
        if kind == "f" and arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = int(np.argmax((~np.isfinite(arr.reshape(arr.shape[0], -1))).any(axis=1)))
            raise CompileInputError(f"{where}: input {name!r} holds NaN or infinite values (first at sample {bad})")
        if kind in "iu" and arr.dtype.kind == "f":
            raise CompileInputError(f"{where}: input {name!r} is {arr.dtype}, the model expects integers ({spec['dtype']})")
    assert n is not None
    if ds.labels is None:
        if need_labels:
            raise CompileInputError(f"{where}: a 'labels' array is needed for task {task!r}")
    else:
        if ds.labels.shape[0] != n:
            raise CompileInputError(f"{where}: labels has {ds.labels.shape[0]} entries for {n} samples")
        if task == "classification":
            if ds.labels.dtype.kind not in "iu":
                if ds.labels.dtype.kind == "f" and np.all(np.mod(ds.labels, 1) == 0):
                    ds.labels = ds.labels.astype(np.int64)
                else:
                    raise CompileInputError(f"{where}: classification labels must be integers, got {ds.labels.dtype}")
            if ds.labels.ndim != 1:
                raise CompileInputError(f"{where}: classification labels must be 1-D, got shape {ds.labels.shape}")
            lo, hi = int(ds.labels.min()), int(ds.labels.max())
            if lo < 0 or (n_classes is not None and hi >= n_classes):
                raise CompileInputError(f"{where}: labels range over [{lo}, {hi}] but the model has "
                                        f"{n_classes} classes (expected 0..{(n_classes or 1) - 1})")
        elif ds.labels.dtype.kind == "f" and not np.isfinite(ds.labels).all():
            raise CompileInputError(f"{where}: labels hold NaN or infinite values")
    if ds.slices is not None:
        if ds.slices.shape[0] != n or ds.slices.ndim != 1:
            raise CompileInputError(f"{where}: slices must be 1-D with one entry per sample ({n}), "
                                    f"got shape {ds.slices.shape}")
        values, counts = np.unique(ds.slices, return_counts=True)
        small = [(v, c) for v, c in zip(values.tolist(), counts.tolist(), strict=True) if c < min_slice_size]
        if small:
            listed = ", ".join(f"{v!r}: {c}" for v, c in small[:5])
            raise CompileInputError(f"{where}: slice(s) too small for a per-slice metric ({listed}); "
                                    f"each slice needs at least {min_slice_size} samples")


def cast_to_spec(ds: Dataset, input_specs: Sequence[Mapping[str, Any]]) -> Dataset:
    """Arrays in the model's dtype (e.g. float64 npz data fed to a float32 model)."""
    return Dataset({s["name"]: np.ascontiguousarray(ds.inputs[s["name"]], dtype=np.dtype(s["dtype"]))
                    for s in input_specs}, ds.labels, ds.slices, ds.source)
