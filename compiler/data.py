"""Calibration and evaluation data: loading (.npz or a Python callable) and validation.

Validation runs before any expensive step so a build pipeline fails in seconds with a message
that names the key, the sample and what was expected, instead of deep inside a quantizer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compiler.errors import CompileInputError
from compiler.loading import load_callable

RESERVED_KEYS = ("labels", "slices")


@dataclass
class Dataset:
    """Named model inputs in the model's own layout, optional labels and slice ids.

    Each input's samples lie on its batch axis (`batch_axes`, default 0): a recurrent state
    (2, batch, 128) has them on axis 1. An input with axis None is a constant (a scalar such as a
    sample rate) given whole to every call."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    slices: np.ndarray | None = None
    source: str = "<memory>"
    batch_axes: dict[str, int | None] = field(default_factory=dict)

    def axis(self, name: str) -> int | None:
        return self.batch_axes.get(name, 0)

    @property
    def n(self) -> int:
        batched = [(v, a) for k, v in self.inputs.items() if (a := self.axis(k)) is not None]
        return int(batched[0][0].shape[batched[0][1]]) if batched else 1

    def _rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        out = {}
        for k, v in self.inputs.items():
            a = self.axis(k)
            out[k] = v if a is None else v[(slice(None),) * a + (slice(start, stop),)]
        return out

    def take(self, count: int) -> Dataset:
        """The first `count` samples (calibration uses a small prefix)."""
        count = min(count, self.n)
        return Dataset(self._rows(0, count), None if self.labels is None else self.labels[:count],
                       None if self.slices is None else self.slices[:count], self.source, dict(self.batch_axes))

    def select(self, index: np.ndarray) -> Dataset:
        """The samples at `index` (a slice-balanced calibration subset), each input on its batch axis."""
        inputs = {k: v if (a := self.axis(k)) is None else np.take(v, index, axis=a) for k, v in self.inputs.items()}
        return Dataset(inputs, None if self.labels is None else self.labels[index],
                       None if self.slices is None else self.slices[index], self.source, dict(self.batch_axes))

    def batches(self, size: int = 1) -> list[dict[str, np.ndarray]]:
        """Model feeds of `size` samples: every input cut on its own batch axis, constants whole."""
        return [self._rows(i, i + size) for i in range(0, self.n, size)]

    def sha256(self) -> str:
        """Content hash (names, dtypes, shapes, bytes, non-default batch axes) for the cache key and provenance."""
        h = hashlib.sha256()
        for key, arr in sorted({**self.inputs, "__labels": self.labels, "__slices": self.slices}.items()):
            if arr is None:
                continue
            a = np.ascontiguousarray(arr)
            h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes() if a.dtype != object else repr(a.tolist()).encode())
        moved = {k: a for k, a in sorted(self.batch_axes.items()) if a != 0}
        if moved:
            h.update(f"__batch_axes|{moved}".encode())
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


def spec_batch_axis(spec: Mapping[str, Any]) -> int | None:
    """Where an input's samples lie: the axis its spec names "batch" (agent.runtime_specs.label_dims),
    none for a scalar, else 0 (a fixed leading 1 is fed sample by sample)."""
    shape = list(spec["shape"])
    return shape.index("batch") if "batch" in shape else (None if not shape else 0)


def align_to_specs(ds: Dataset, input_specs: Sequence[Mapping[str, Any]], role: str = "data") -> Dataset:
    """The data with each input's batch axis from its spec; a scalar input given once per sample
    (all the same value, as .npz files store it) becomes the one constant the model takes per call."""
    inputs = dict(ds.inputs)
    for spec in input_specs:
        arr = inputs.get(spec["name"])
        if arr is None or spec_batch_axis(spec) is not None or arr.ndim != 1:
            continue
        values = np.unique(arr)
        if len(values) != 1:
            shown = ", ".join(map(str, values[:3].tolist()))
            raise CompileInputError(f"{role} ({ds.source}): input {spec['name']!r} is a scalar the model takes once "
                                    f"per call, but the data holds {len(values)} different values ({shown}); give one")
        inputs[spec["name"]] = np.asarray(arr[0])
    axes = {s["name"]: spec_batch_axis(s) for s in input_specs}
    return Dataset(inputs, ds.labels, ds.slices, ds.source, {k: a for k, a in axes.items() if a != 0})


def _check_input(where: str, spec: Mapping[str, Any], arr: np.ndarray, batch: int | None) -> int | None:
    """One input against its spec; returns its sample count (None for a constant)."""
    name, want, got = spec["name"], list(spec["shape"]), list(arr.shape)
    if batch is not None and (arr.ndim <= batch or arr.shape[batch] == 0):
        raise CompileInputError(f"{where}: input {name!r} is empty")
    if len(want) != len(got):
        raise CompileInputError(f"{where}: input {name!r} has shape {tuple(got)}, the model expects rank "
                                f"{len(want)} {tuple(want)}")
    for axis, (w, g) in enumerate(zip(want, got, strict=True)):
        if isinstance(w, int) and axis != batch and w != g:
            hint = f"; its samples go on axis {batch}" if batch else ""
            raise CompileInputError(f"{where}: input {name!r} has shape {tuple(got)}, the model expects "
                                    f"{tuple(want)} (axis {axis} is {g}, expected {w}{hint})")
    kind = np.dtype(spec["dtype"]).kind
    if arr.dtype.kind not in "biuf":
        raise CompileInputError(f"{where}: input {name!r} has dtype {arr.dtype}, expected {spec['dtype']}")
    if kind == "f" and arr.dtype.kind == "f" and not np.isfinite(arr).all():
        rows = arr.reshape(1, -1) if batch is None else np.moveaxis(arr, batch, 0).reshape(arr.shape[batch], -1)
        bad = int(np.argmax((~np.isfinite(rows)).any(axis=1)))
        raise CompileInputError(f"{where}: input {name!r} holds NaN or infinite values (first at sample {bad})")
    if kind in "iu" and arr.dtype.kind == "f":
        raise CompileInputError(f"{where}: input {name!r} is {arr.dtype}, the model expects integers ({spec['dtype']})")
    return None if batch is None else int(arr.shape[batch])


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
        count = _check_input(where, spec, ds.inputs[name], ds.axis(name))
        if n is None:
            n = count
        elif count is not None and count != n:
            raise CompileInputError(f"{where}: input {name!r} has {count} samples, others have {n}")
    if n is None:
        raise CompileInputError(f"{where}: no input has a batch axis to hold samples")
    _check_labels_and_slices(ds, where, n, task=task, n_classes=n_classes, need_labels=need_labels,
                             min_slice_size=min_slice_size)


def _check_labels_and_slices(ds: Dataset, where: str, n: int, *, task: str, n_classes: int | None,
                             need_labels: bool, min_slice_size: int) -> None:
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
    """Arrays in the model's dtype (e.g. float64 npz data fed to a float32 model), batch axes kept."""
    # np.ascontiguousarray would make a scalar input 1-D.
    return Dataset({s["name"]: np.array(ds.inputs[s["name"]], dtype=np.dtype(s["dtype"]), order="C")
                    for s in input_specs}, ds.labels, ds.slices, ds.source, dict(ds.batch_axes))
