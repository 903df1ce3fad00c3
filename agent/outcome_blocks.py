"""Request-id blocks: how the outcome store (agent/outcomes.py) keeps predictions cheaply.

The agent's request ids are `<process prefix>-<hex counter>`. One flush of one model's requests
becomes ONE SQLite row holding the counters and the predictions as packed arrays, instead of one
row per request: SQLite's per-row insert (two B-trees per row) was most of what request ids and
outcomes cost the agent. A label finds its block by prefix and counter range, reads its entry and
marks it taken (a label counts once). Ids of another shape (a batch row's `<id>/<j>`) keep one
row each in the `predictions` table.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

SCHEMA = ("CREATE TABLE IF NOT EXISTS blocks (prefix TEXT, lo INTEGER, hi INTEGER, version INTEGER, at REAL, "
          "n INTEGER, counters BLOB, predicted BLOB, value BLOB, bucket BLOB, codes BLOB, slices TEXT, "
          "taken BLOB, left INTEGER)",
          "CREATE INDEX IF NOT EXISTS blocks_prefix_lo ON blocks (prefix, lo)")
INSERT = "INSERT INTO blocks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
CANDIDATES = 64   # blocks whose range may hold a counter: one per model served in the same flush


@dataclass
class Columns:
    """One model's pending predictions, one entry per request row (classification: predicted and
    bucket; regression: value)."""

    version: int
    rids: list[str]
    slices: list[str]
    predicted: np.ndarray | None = None
    value: np.ndarray | None = None
    bucket: np.ndarray | None = None

    def rows(self, now: float) -> list[tuple[Any, ...]]:
        """The per-request rows of the `predictions` table."""
        n = len(self.rids)
        pred = self.predicted.tolist() if self.predicted is not None else [None] * n
        val = self.value.tolist() if self.value is not None else [None] * n
        buck = self.bucket.tolist() if self.bucket is not None else [None] * n
        return [(r, self.version, p, v, b, s, now)
                for r, p, v, b, s in zip(self.rids, pred, val, buck, self.slices, strict=True)]


def _split(rid: str) -> tuple[str, int] | None:
    prefix, dash, tail = rid.rpartition("-")
    if not dash or not prefix or not tail.isalnum():
        return None
    try:
        return prefix, int(tail, 16)
    except ValueError:
        return None


def pack(cols: Columns, now: float) -> tuple[Any, ...] | None:
    """The block row of `cols`, or None when its ids are not all `<prefix>-<hex counter>` of one prefix."""
    first = _split(cols.rids[0]) if cols.rids else None
    if first is None:
        return None
    head = first[0] + "-"
    k = len(head)
    try:
        if not all(r.startswith(head) and r[k:].isalnum() for r in cols.rids):
            return None
        counters = np.array([int(r[k:], 16) for r in cols.rids], dtype=np.int64)
    except ValueError:
        return None
    order = np.argsort(counters, kind="stable")
    names = sorted(set(cols.slices))
    index = {s: i for i, s in enumerate(names)}
    codes = np.array([index[s] for s in cols.slices], dtype=np.int32)[order]

    def blob(a: np.ndarray | None, dtype: Any) -> bytes | None:
        return None if a is None else np.ascontiguousarray(np.asarray(a, dtype=dtype)[order]).tobytes()

    n = len(counters)
    return (first[0], int(counters[order[0]]), int(counters[order[-1]]), cols.version, now, n,
            counters[order].tobytes(), blob(cols.predicted, np.int64), blob(cols.value, np.float64),
            blob(cols.bucket, np.int64), codes.tobytes(), json.dumps(names), bytes(n), n)


def find(db: sqlite3.Connection, request_id: str) -> tuple[int, int, bytes, tuple[Any, ...]] | None:
    """(block rowid, entry, taken flags, row as the predictions table has it) of an untaken id."""
    parts = _split(request_id)
    if parts is None:
        return None
    prefix, c = parts
    found = db.execute(f"SELECT rowid, version, at, counters, predicted, value, bucket, codes, slices, taken "
                       f"FROM (SELECT rowid, * FROM blocks WHERE prefix = ? AND lo <= ? ORDER BY lo DESC "
                       f"LIMIT {CANDIDATES}) WHERE hi >= ?", (prefix, c, c)).fetchall()
    for rowid, version, at, counters, pred, value, bucket, codes, slices, taken in found:
        cs = np.frombuffer(counters, dtype=np.int64)
        i = int(np.searchsorted(cs, c))
        if i >= len(cs) or cs[i] != c or taken[i]:
            continue
        name = json.loads(slices)[int(np.frombuffer(codes, dtype=np.int32)[i])]
        return rowid, i, taken, (request_id, version, _entry(pred, np.int64, i), _entry(value, np.float64, i),
                                 _entry(bucket, np.int64, i), name, at)
    return None


def _entry(b: bytes | None, dtype: Any, i: int) -> Any:
    return None if b is None else np.frombuffer(b, dtype=dtype)[i].item()


def mark_taken(db: sqlite3.Connection, rowid: int, taken: bytes, i: int) -> None:
    flags = bytearray(taken)
    flags[i] = 1
    db.execute("UPDATE blocks SET taken = ?, left = left - 1 WHERE rowid = ?", (bytes(flags), rowid))


def prune(db: sqlite3.Connection, cutoff: float) -> int:
    """Delete blocks made before `cutoff` (rowid order is age order); entries left in them."""
    where = ("rowid < COALESCE((SELECT rowid FROM blocks WHERE at >= ? ORDER BY rowid LIMIT 1), "
             "(SELECT MAX(rowid) + 1 FROM blocks))")
    gone = db.execute(f"SELECT COALESCE(SUM(left), 0) FROM blocks WHERE {where}", (cutoff,)).fetchone()[0]
    if gone:
        db.execute(f"DELETE FROM blocks WHERE {where}", (cutoff,))
    return int(gone)


def oldest(db: sqlite3.Connection, excess: int) -> Iterable[int]:
    """Rowids of the oldest blocks holding at least `excess` entries (whole blocks go)."""
    removed = 0
    for rowid, left in db.execute("SELECT rowid, left FROM blocks ORDER BY rowid").fetchall():
        if removed >= excess:
            break
        removed += int(left)
        yield int(rowid)
