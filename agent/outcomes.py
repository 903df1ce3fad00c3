"""Outcomes that arrive later: request id -> what the model said, and per-window quality.

Hot path: `Predictor.predict` appends one tuple (request id, model, output, slice) to a list.
`OutcomeStore.flush` (the telemetry timer, once a second, or a feedback call) turns the pending
requests into columns in one numpy pass per model (predicted class, top-1 probability bucket) and
writes them to `outcomes.sqlite` in the state dir, one packed row per flush and model
(agent/outcome_blocks.py): bounded by `horizon_s` (default 24 h) and
`max_records`, oldest pruned first. It holds no inputs, only version, prediction, confidence
bucket and slice key, so it is not sealed (0600 like the rest of the state dir). A full disk
is counted by DiskGuard and the pending rows are dropped (feedback for them answers unknown).

`feedback(request_id, label)` finds the row, removes it (a label counts once) and adds it to
the current window's OutcomeWindow of that version: per slice a confusion matrix
(classification) or an error histogram (regression), plus per confidence bucket how many
labelled predictions were right (the fleet's calibration for the label-free estimate).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent import outcome_blocks as blocks
from agent.confidence import (
    ALL_SLICE,
    CONFIDENCE_EDGES,
    OTHER_SLICE,
    MonitorSpec,
    bucket,
    probabilities,
    top2,
)

if TYPE_CHECKING:
    from agent.disk_guard import DiskGuard

HORIZON_S = 24 * 3600.0
MAX_RECORDS = 1_000_000


class UnknownRequest(KeyError):
    """No prediction with this id within the horizon (expired, already labelled, or never made)."""


@dataclass
class OutcomeWindow:
    """Labelled outcomes of one model version in one window."""

    spec: MonitorSpec
    confusion: dict[str, np.ndarray] = field(default_factory=dict)    # slice -> (k, k) [true, predicted]
    errors: dict[str, np.ndarray] = field(default_factory=dict)       # slice -> counts on error_edges
    abs_error: dict[str, float] = field(default_factory=dict)
    sq_error: dict[str, float] = field(default_factory=dict)
    calib_n: np.ndarray = field(default_factory=lambda: np.zeros(len(CONFIDENCE_EDGES) + 1, dtype=np.int64))
    calib_correct: np.ndarray = field(default_factory=lambda: np.zeros(len(CONFIDENCE_EDGES) + 1, dtype=np.int64))
    labelled: int = 0
    invalid: int = 0

    def add(self, row: tuple[Any, ...], label: Any) -> bool:
        _, _, pred, value, conf_bucket, slice_key = row[:6]
        if self.spec.classification:
            k = int(self.spec.n_classes or 0)
            try:
                y = int(label)
            except (TypeError, ValueError):
                self.invalid += 1
                return False
            if not 0 <= y < k or pred is None or not 0 <= int(pred) < k:
                self.invalid += 1
                return False
            m = self.confusion.setdefault(slice_key, np.zeros((k, k), dtype=np.int64))
            m[y, int(pred)] += 1
            if conf_bucket is not None:
                self.calib_n[conf_bucket] += 1
                self.calib_correct[conf_bucket] += int(y == int(pred))
        else:
            try:
                err = float(value) - float(label)
            except (TypeError, ValueError):
                self.invalid += 1
                return False
            if not np.isfinite(err):
                self.invalid += 1
                return False
            edges = list(self.spec.error_edges)
            h = self.errors.setdefault(slice_key, np.zeros(len(edges) + 1, dtype=np.int64))
            h[int(bucket(np.asarray([err]), edges)[0])] += 1
            self.abs_error[slice_key] = self.abs_error.get(slice_key, 0.0) + abs(err)
            self.sq_error[slice_key] = self.sq_error.get(slice_key, 0.0) + err * err
        self.labelled += 1
        return True

    def to_dict(self) -> dict[str, Any]:
        """Slices under `min_slice_count` labels are merged into OTHER_SLICE (data minimisation)."""
        out: dict[str, Any] = {"labelled": self.labelled, "invalid": self.invalid}
        small = self.spec.min_slice_count
        if self.spec.classification:
            merged: dict[str, np.ndarray] = {}
            for key, m in self.confusion.items():
                k = key if key == ALL_SLICE or m.sum() >= small else OTHER_SLICE
                merged[k] = merged[k] + m if k in merged else m.copy()
            out["kind"] = "class"
            out["n_classes"] = int(self.spec.n_classes or 0)
            out["slices"] = {k: _confusion(m) for k, m in sorted(merged.items())}
            out["calibration"] = {"edges": CONFIDENCE_EDGES, "n": self.calib_n.tolist(),
                                  "correct": self.calib_correct.tolist()}
        else:
            slices: dict[str, dict[str, Any]] = {}
            for key, h in self.errors.items():
                k = key if key == ALL_SLICE or h.sum() >= small else OTHER_SLICE
                s = slices.setdefault(k, {"n": 0, "counts": np.zeros_like(h), "abs_error_sum": 0.0,
                                          "sq_error_sum": 0.0})
                s["n"] += int(h.sum())
                s["counts"] = s["counts"] + h
                s["abs_error_sum"] += self.abs_error.get(key, 0.0)
                s["sq_error_sum"] += self.sq_error.get(key, 0.0)
            out["kind"] = "value"
            out["error_edges"] = list(self.spec.error_edges)
            out["slices"] = {k: {"n": s["n"], "counts": s["counts"].tolist(),
                                 "abs_error_sum": round(s["abs_error_sum"], 6),
                                 "sq_error_sum": round(s["sq_error_sum"], 6)} for k, s in sorted(slices.items())}
        return out


DENSE_CONFUSION_MAX_CLASSES = 32   # above: nonzero cells only, so 1000 classes never make k*k numbers


def _confusion(m: np.ndarray) -> dict[str, Any]:
    if m.shape[0] <= DENSE_CONFUSION_MAX_CLASSES:
        return {"n": int(m.sum()), "confusion": m.tolist()}
    t, p = np.nonzero(m)
    return {"n": int(m.sum()), "confusion_sparse": [[int(a), int(b), int(m[a, b])] for a, b in zip(t, p, strict=True)]}


class OutcomeStore:
    """Bounded, disk-backed request id -> (version, prediction, confidence bucket, slice)."""

    def __init__(self, path: Path, *, horizon_s: float = HORIZON_S, max_records: int = MAX_RECORDS,
                 disk: DiskGuard | None = None) -> None:
        self.path = Path(path)
        self.horizon_s = float(horizon_s)
        self.max_records = int(max_records)
        self.disk = disk
        self.pending: list[tuple[str, Any, np.ndarray, str]] = []
        self.dropped = 0
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            self.path.chmod(0o600)
        except OSError:
            pass
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS predictions (id TEXT PRIMARY KEY, version INTEGER, "
                         "predicted INTEGER, value REAL, conf_bucket INTEGER, slice TEXT, at REAL)")
        # Rows are appended in time order, so rowid order is age order: pruning walks rowids and
        # no index on `at` has to be kept up to date on every insert (a third of the write cost).
        self._db.execute("DROP INDEX IF EXISTS predictions_at")
        for sql in blocks.SCHEMA:   # the agent's own ids: one row per flush and model (agent/outcome_blocks.py)
            self._db.execute(sql)
        self._rows_stored = self._count()

    # -- hot path -----------------------------------------------------------------------------
    def record(self, request_id: str, model: Any, output: np.ndarray, slice_key: str) -> None:
        self.pending.append((request_id, model, output, slice_key))

    # -- off the hot path ---------------------------------------------------------------------
    def flush(self, now: float | None = None) -> int:
        """Write pending predictions; prune beyond the horizon and the size cap. Returns rows written."""
        with self._lock:
            pending, self.pending = self.pending, []
            if not pending:
                return 0
            now = time.time() if now is None else now
            rows: list[tuple[Any, ...]] = []
            packed: list[tuple[Any, ...]] = []
            groups: dict[int, list[tuple[str, Any, np.ndarray, str]]] = {}
            for item in pending:
                groups.setdefault(id(item[1]), []).append(item)
            for group in groups.values():
                for cols in self._columns(group):
                    block = blocks.pack(cols, now)
                    if block is None:
                        rows.extend(cols.rows(now))
                    else:
                        packed.append(block)
            written = len(rows) + sum(b[5] for b in packed)
            try:
                self._write(rows, packed, written, now)
            except sqlite3.Error as exc:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if self.disk is None or not self.disk.failed("outcomes", exc):
                    raise
                self.dropped += written
                return 0
            if self.disk is not None:
                self.disk.ok()
            return written

    def _write(self, rows: list[tuple[Any, ...]], packed: list[tuple[Any, ...]], written: int, now: float) -> None:
        """Insert, prune the expired (oldest rowids first) and keep at most max_records (oldest
        first); the count is kept as a running total (COUNT(*) walks the whole table)."""
        cutoff = now - self.horizon_s
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR REPLACE INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        self._db.executemany(blocks.INSERT, packed)
        cur = self._db.execute("DELETE FROM predictions WHERE rowid < COALESCE((SELECT rowid FROM predictions "
                               "WHERE at >= ? ORDER BY rowid LIMIT 1), (SELECT MAX(rowid) + 1 FROM predictions))",
                               (cutoff,))
        gone = max(int(getattr(cur, "rowcount", 0) or 0), 0) + blocks.prune(self._db, cutoff)
        self._db.execute("COMMIT")
        self._rows_stored += written - gone
        excess = self._rows_stored - self.max_records if self.max_records else 0
        if excess > 0:
            self._db.executemany("DELETE FROM blocks WHERE rowid = ?",
                                 [(r,) for r in blocks.oldest(self._db, excess)])
            self._db.execute("DELETE FROM predictions WHERE rowid IN (SELECT rowid FROM predictions ORDER BY rowid "
                             "LIMIT MAX(0, (SELECT COUNT(*) FROM predictions) + (SELECT COALESCE(SUM(left), 0) "
                             "FROM blocks) - ?))", (self.max_records,))
            self._rows_stored = self._count()

    @staticmethod
    def _columns(group: list[tuple[str, Any, np.ndarray, str]]) -> list[blocks.Columns]:
        """One model's pending requests as columns: one numpy pass for predicted class and
        confidence bucket. The usual case (one row per request, same shape) skips per-request
        numpy calls; outputs that do not stack are taken one request at a time."""
        model = group[0][1]
        spec: MonitorSpec | None = getattr(model, "monitor", None)
        version = int(model.version)
        outs = [g[2] for g in group]
        shapes = {getattr(o, "shape", None) for o in outs}
        one = shapes.pop() if len(shapes) == 1 else None
        if one is not None and len(one) >= 1 and one[0] == 1:
            y = np.concatenate(outs).reshape(len(outs), -1)
            rids, slices = [g[0] for g in group], [g[3] for g in group]
        else:
            try:
                y = np.concatenate([np.asarray(o).reshape(np.asarray(o).shape[0] if np.ndim(o) else 1, -1)
                                    for o in outs])
            except ValueError:
                return [c for g in group for c in OutcomeStore._columns([g])]
            rids, slices = [], []
            for rid, _, out, sl in group:
                n = np.asarray(out).shape[0] if np.ndim(out) else 1
                rids.extend([rid] if n == 1 else [f"{rid}/{i}" for i in range(n)])
                slices.extend([sl] * n)
        if spec is not None and spec.classification:
            pred, conf, _ = top2(probabilities(y, spec.softmax))
            return [blocks.Columns(version, rids, slices, predicted=pred, bucket=bucket(conf, CONFIDENCE_EDGES))]
        return [blocks.Columns(version, rids, slices, value=y[:, 0].astype(np.float64))]

    def _count(self) -> int:
        return int(self._db.execute("SELECT (SELECT COUNT(*) FROM predictions) + "
                                    "(SELECT COALESCE(SUM(left), 0) FROM blocks)").fetchone()[0])

    def take(self, request_id: str, now: float | None = None) -> tuple[Any, ...]:
        """The stored prediction of `request_id`, removed (a label counts once); UnknownRequest if none."""
        self.flush(now)
        now = time.time() if now is None else now
        with self._lock:
            hit = blocks.find(self._db, str(request_id))
            row = hit[3] if hit is not None else self._db.execute(
                "SELECT id, version, predicted, value, conf_bucket, slice, at FROM predictions WHERE id = ?",
                (str(request_id),)).fetchone()
            if row is None or row[6] < now - self.horizon_s:
                raise UnknownRequest(request_id)
            try:
                if hit is not None:
                    blocks.mark_taken(self._db, hit[0], hit[2], hit[1])
                else:
                    self._db.execute("DELETE FROM predictions WHERE id = ?", (str(request_id),))
                self._rows_stored -= 1
            except sqlite3.Error as exc:
                if self.disk is None or not self.disk.failed("outcomes", exc):
                    raise
            return (row[0], row[1], row[2], row[3], row[4], row[5])

    def __len__(self) -> int:
        with self._lock:
            return self._count() + len(self.pending)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._db.close()


class Outcomes:
    """Pending OutcomeWindows by version; the telemetry window close takes the one of each model."""

    def __init__(self, store: OutcomeStore, specs: Mapping[int, MonitorSpec] | None = None) -> None:
        self.store = store
        self.specs: dict[int, MonitorSpec] = dict(specs or {})
        self.windows: dict[int, OutcomeWindow] = {}
        self._lock = threading.Lock()

    def feedback(self, request_id: str, label: Any) -> dict[str, Any]:
        row = self.store.take(request_id)
        version = int(row[1])
        spec = self.specs.get(version)
        if spec is None:
            raise UnknownRequest(request_id)
        with self._lock:
            w = self.windows.setdefault(version, OutcomeWindow(spec))
            ok = w.add(row, label)
        if not ok:
            raise ValueError(f"label {label!r} does not fit the prediction of {request_id}")
        return {"request_id": request_id, "version": version, "predicted": row[2] if row[2] is not None else row[3]}

    def take_window(self, version: int) -> dict[str, Any] | None:
        with self._lock:
            w = self.windows.pop(version, None)
        return w.to_dict() if w is not None and (w.labelled or w.invalid) else None


def open_outcomes(state_dir: Path, cfg: Any, disk: DiskGuard | None) -> Outcomes | None:
    """The agent's outcome store per its telemetry config; None when outcomes are off or the store
    cannot be opened (logged: serving never depends on it)."""
    if not getattr(cfg, "outcomes", True):
        return None
    try:
        store = OutcomeStore(Path(state_dir) / "outcomes.sqlite", horizon_s=cfg.outcome_horizon_s,
                             max_records=cfg.outcome_max_records, disk=disk)
    except (OSError, sqlite3.Error) as exc:
        import logging

        logging.getLogger(__name__).error("event=outcomes-unavailable reason=%s", exc)
        return None
    return Outcomes(store)


def http_feedback(feedback: Any, body: Any, error_kind: Any) -> tuple[int, str, list[bytes]]:
    """POST /v1/feedback {"request_id": "...", "label": 3} or {"outcomes": [{...}, ...]} on the
    local server: 200 {"accepted": n, "unknown": [...], "invalid": [...]}; 400 on a malformed body."""
    import json

    def answer(code: int, doc: dict[str, Any]) -> tuple[int, str, list[bytes]]:
        return code, "application/json", [json.dumps(doc).encode()]

    try:
        doc = json.loads(bytes(body) or b"null")
    except (ValueError, RecursionError) as exc:
        return answer(400, {"error": {"kind": "invalid_input", "message": f"body is not JSON: {exc}"}})
    items = doc.get("outcomes", [doc]) if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items or not all(
            isinstance(i, dict) and isinstance(i.get("request_id"), str) and "label" in i for i in items):
        return answer(400, {"error": {"kind": "invalid_input",
                                      "message": "body must be {\"request_id\": str, \"label\": ...} or "
                                                 "{\"outcomes\": [...]}"}})
    accepted, unknown, invalid = 0, [], []
    for item in items[:10000]:
        try:
            feedback(item["request_id"], item["label"])
            accepted += 1
        except UnknownRequest:
            unknown.append(item["request_id"])
        except ValueError:
            invalid.append(item["request_id"])
        except Exception as exc:  # e.g. a full disk: the client may retry
            code, kind = error_kind(exc)
            return answer(code, {"error": {"kind": kind, "message": str(exc)}, "accepted": accepted})
    code = 404 if len(items) == 1 and unknown else (400 if len(items) == 1 and invalid else 200)
    return answer(code, {"accepted": accepted, "unknown": unknown, "invalid": invalid})
