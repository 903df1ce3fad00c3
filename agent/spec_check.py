"""Check request inputs against the manifest's input spec before they reach a runtime.

A spec is {"name", "shape", "dtype"}; a dim is an int (fixed) or a string (symbolic, e.g.
"batch"). The same symbol must take the same size across inputs of one request. Safe casts
(e.g. float64 JSON numbers to float32, int lists to int64) are done here; anything else is an
InputError with a message that names the input and what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


class InputError(Exception):
    """A request does not match the model's input spec; the message says how."""

    kind = "invalid_input"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]
    dtype: np.dtype
    quantized: bool = False  # int8/uint8 tensor with a scale: float requests are quantized by the runtime

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        shape = [int(s) if isinstance(s, int) or (isinstance(s, str) and s.isdigit()) else str(s)
                 for s in d.get("shape", [])]
        # A model compiled for a fixed batch (TFLite's norm) whose runtime loops over the batch axis.
        axis = d.get("batch_axis")
        if isinstance(axis, int) and 0 <= axis < len(shape):
            shape[axis] = "batch"
        try:
            dtype = np.dtype(d.get("dtype", "float32"))
        except TypeError:  # a manifest installed before dtypes were checked at verify
            raise ValueError(f"tensor {d.get('name')!r} has an unknown dtype {d.get('dtype')!r}") from None
        return cls(str(d["name"]), tuple(shape), dtype, bool(d.get("quantization")))

    def describe(self) -> str:
        return f"{self.name}{list(self.shape)} {self.dtype.name}"


def specs_from_manifest(manifest: Mapping[str, Any], key: str = "inputs") -> list[TensorSpec]:
    return [TensorSpec.from_dict(d) for d in manifest.get(key, [])]


def _cast(name: str, arr: np.ndarray, want: np.dtype) -> np.ndarray:
    if arr.dtype == want:
        return arr
    k, w = arr.dtype.kind, want.kind
    ok = (w == "f" and k in "fiub") or (w in "iu" and k in "iub") or (w == "b" and k == "b")
    if w in "iu" and k == "f":
        if np.all(np.isfinite(arr)) and np.all(np.mod(arr, 1) == 0):
            ok = True
    if not ok:
        raise InputError(f"input {name!r} has dtype {arr.dtype.name}, the model expects {want.name}")
    if w in "iu" and arr.size:
        info = np.iinfo(want)
        if arr.min() < info.min or arr.max() > info.max:
            raise InputError(f"input {name!r} has values outside the range of {want.name}")
    return arr.astype(want)


def check_inputs(inputs: Mapping[str, Any] | np.ndarray | Sequence[Any], specs: Sequence[TensorSpec]
                 ) -> dict[str, np.ndarray]:
    """Validated, contiguous arrays keyed by input name. Raises InputError."""
    if isinstance(inputs, np.ndarray) or not isinstance(inputs, Mapping):
        if len(specs) != 1:
            raise InputError(f"the model has {len(specs)} inputs ({', '.join(s.name for s in specs)});"
                             " pass a mapping of name to array")
        inputs = {specs[0].name: inputs}
    names = [s.name for s in specs]
    unknown = sorted(set(inputs) - set(names))
    missing = [n for n in names if n not in inputs]
    if unknown or missing:
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(map(repr, missing))}")
        if unknown:
            parts.append(f"unknown input(s) {', '.join(map(repr, unknown))}")
        raise InputError("; ".join(parts) + f"; the model expects {', '.join(s.describe() for s in specs)}")
    symbols: dict[str, int] = {}
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        raw = inputs[spec.name]
        try:
            arr = raw if isinstance(raw, np.ndarray) else np.asarray(raw)
        except (ValueError, TypeError) as exc:
            raise InputError(f"input {spec.name!r} is not a rectangular array: {exc}") from None
        if arr.dtype == object:
            raise InputError(f"input {spec.name!r} is not a rectangular numeric array")
        if arr.ndim != len(spec.shape):
            raise InputError(f"input {spec.name!r} has {arr.ndim} dimensions {list(arr.shape)},"
                             f" expected {len(spec.shape)} {list(spec.shape)}")
        for axis, (got, want) in enumerate(zip(arr.shape, spec.shape, strict=True)):
            if isinstance(want, int) and want >= 0:
                if got != want:
                    raise InputError(f"input {spec.name!r} dimension {axis} is {got}, expected {want}")
            else:
                sym = str(want)
                if got == 0:
                    raise InputError(f"input {spec.name!r} dimension {axis} ({sym}) is empty")
                if symbols.setdefault(sym, got) != got:
                    raise InputError(f"input {spec.name!r} dimension {axis} ({sym}) is {got}, but another"
                                     f" input has {sym}={symbols[sym]}")
        if spec.quantized and arr.dtype.kind == "f":
            arr = arr.astype(np.float32, copy=False)  # the runtime quantizes with the tensor's scale
        else:
            arr = _cast(spec.name, arr, spec.dtype)
        out[spec.name] = arr if arr.flags.c_contiguous else arr.copy(order="C")
    return out


def example_inputs(specs: Sequence[TensorSpec], batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs that fit the spec, for warm-up and health checks."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        shape = [d if isinstance(d, int) and d >= 0 else batch for d in s.shape]
        if s.dtype.kind == "f":
            out[s.name] = rng.random(shape).astype(s.dtype)
        elif s.dtype.kind in "iu":
            out[s.name] = rng.integers(0, 2, size=shape).astype(s.dtype)
        else:
            out[s.name] = np.zeros(shape, dtype=s.dtype)
    return out
