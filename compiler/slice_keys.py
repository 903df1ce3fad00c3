"""Slice keys declared at build (`--slice-key`, `slices = [...]` in compile.toml): the manifest's
`monitoring.slices`, which the agent keeps outcomes and slice counts by (agent/confidence.py).

Two kinds, as the agent knows them:
* `KEY`: a request metadata key (`Agent.predict(x, metadata={"region": "eu"})`, `"metadata"` in
  the local server's request). Nothing at build time can check its values.
* `KEY=COLUMN`: bins of one input column; COLUMN is `INDEX` (a column of the model's only input,
  per sample) or `INPUT[INDEX]`. The bins are the eval data's quartiles of that column, so each
  holds about a quarter of the eval samples; a column that is not in the model is bad input.

This module imports numpy only (the CLI and config validation stay light).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from compiler.errors import CompileInputError

KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
COLUMN = re.compile(r"(?:(?P<input>[^\[\]=]+)\[(?P<bracket>\d+)\]|(?P<index>\d+))")
QUANTILES = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class SliceKey:
    key: str
    input: str | None = None   # None with index None: a metadata key; None with an index: the only input
    index: int | None = None

    @property
    def is_feature(self) -> bool:
        return self.index is not None

    @property
    def spec(self) -> str:
        """The canonical `--slice-key` text (what the cache key and provenance record)."""
        if self.index is None:
            return self.key
        return f"{self.key}={self.index}" if self.input is None else f"{self.key}={self.input}[{self.index}]"


def parse(values: Sequence[str] | str | None) -> list[SliceKey]:
    """Syntax only (no data needed): `region`, `age=3`, `age=x[3]`; duplicates refused."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
        raise CompileInputError(f"slices must be a list of slice-key names, got {values!r}")
    out: list[SliceKey] = []
    for raw in values:
        key, eq, column = raw.strip().partition("=")
        if not KEY.fullmatch(key):
            raise CompileInputError(f"--slice-key {raw!r}: a key is a name like region (letters, digits, _ . -; "
                                    "at most 32)")
        if not eq:
            out.append(SliceKey(key))
            continue
        m = COLUMN.fullmatch(column.strip())
        if m is None:
            raise CompileInputError(f"--slice-key {raw!r}: the column is INDEX or INPUT[INDEX], e.g. age=3")
        index = int(m["bracket"] if m["bracket"] is not None else m["index"])
        out.append(SliceKey(key, m["input"], index))
    names = [k.key for k in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CompileInputError(f"--slice-key {dup[0]!r} is given twice")
    return out


def _column(sk: SliceKey, inputs: dict[str, np.ndarray]) -> tuple[str, np.ndarray]:
    """The input name and the eval samples' values of one feature slice's column; bad input if absent."""
    names = list(inputs)
    if sk.input is None and len(names) != 1:
        raise CompileInputError(f"--slice-key {sk.key}={sk.index}: the model has {len(names)} inputs "
                                f"({', '.join(names)}); name one: {sk.key}=INPUT[{sk.index}]")
    name = names[0] if sk.input is None else sk.input
    if name not in inputs:
        raise CompileInputError(f"--slice-key {sk.key}={sk.input}[{sk.index}]: unknown column: the model has "
                                f"no input {sk.input!r} (inputs: {', '.join(names)})")
    x = np.asarray(inputs[name])
    flat = x.reshape(len(x), -1)
    if sk.index >= flat.shape[1]:  # type: ignore[operator]
        raise CompileInputError(f"--slice-key {sk.key}: unknown column {sk.index}: input {name!r} has "
                                f"{flat.shape[1]} columns per sample (0-{flat.shape[1] - 1})")
    if not np.issubdtype(flat.dtype, np.number):
        raise CompileInputError(f"--slice-key {sk.key}: input {name!r} is not numeric; bins need numbers")
    return name, flat[:, sk.index].astype(np.float64)


def monitoring_slices(values: Sequence[str] | str | None, inputs: dict[str, np.ndarray],
                      base: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The manifest's `monitoring.slices` for the declared keys, checked against the model's inputs
    (the eval data by input name); `base` (e.g. max_slices, min_count) is kept. None: no keys."""
    keys = parse(values)
    if not keys:
        return base or None
    out: dict[str, Any] = dict(base or {})
    meta = [k.key for k in keys if not k.is_feature]
    feats = []
    for sk in (k for k in keys if k.is_feature):
        name, col = _column(sk, inputs)
        col = col[np.isfinite(col)]
        edges = sorted({round(float(e), 6) for e in np.quantile(col, QUANTILES)}) if col.size else []
        feats.append({"key": sk.key, "input": name, "index": sk.index, "edges": edges})
    if meta:
        out["metadata"] = meta
    if feats:
        out["features"] = feats
    return out
