"""Fold a batch's partial aggregates into the aggregate table, in the batch's transaction.

Each key (model, version, role, class, cohort, slot, rollout wave) is inserted empty if new, locked, merged in
Python (fleet.ingest.aggregate.merge_into) and written back. Keys are handled in sorted order,
so two ingest processes merging overlapping keys lock them in the same order and never deadlock.

PostgreSQL: three statements per batch whatever the number of keys (insert the missing keys, lock
and read them in one SELECT ... ORDER BY ... FOR UPDATE with the payloads as text for orjson, one
UPDATE), each with its rows as one JSON document. SQLite (one writer at a time): SQLAlchemy Core, a
SELECT per key.
"""

from __future__ import annotations

from typing import Any

from orjson import Fragment, dumps
from orjson import loads as _loads
from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection, Engine

from fleet.db import json_dumps
from fleet.ingest import aggregate
from fleet.ingest.records import insert_ignore
from fleet.models import Aggregate

KEY = ("model_name", "model_version", "role", "device_class", "cohort", "window_start", "wave")
Key = tuple[Any, ...]
_AGG = Aggregate.__table__  # type: ignore[attr-defined]
# one JSON document (dumped by orjson) per statement instead of column arrays: psycopg dumps
# array elements in Python, about 1.4 us each
_PG_INSERT = (f"INSERT INTO aggregate ({', '.join(KEY)}, window_seconds, n_windows, requests, errors, payload, "
              f"updated_at) SELECT {', '.join(KEY)}, window_seconds, 0, 0, 0, %s::json, %s "
              f"FROM json_populate_recordset(NULL::aggregate, %s::json) ON CONFLICT ({', '.join(KEY)}) DO NOTHING")
# ordinality = our sorted order; the row locks are taken in it (LockRows sits above the sort)
_PG_SELECT = (f"SELECT a.id, a.payload::text FROM aggregate a JOIN json_populate_recordset(NULL::aggregate, %s::json) "
              f"WITH ORDINALITY AS k USING ({', '.join(KEY)}) ORDER BY k.ordinality FOR UPDATE OF a")
_PG_UPDATE = ("UPDATE aggregate a SET payload = u.payload, n_windows = u.n_windows, requests = u.requests, "
              "errors = u.errors, updated_at = %s FROM json_populate_recordset(NULL::aggregate, %s::json) AS u "
              "WHERE a.id = u.id")
_SELECT = select(_AGG.c.id, _AGG.c.payload).where(*[_AGG.c[c] == bindparam(f"k_{c}") for c in KEY]).with_for_update()
_UPDATE = update(_AGG).where(_AGG.c.id == bindparam("agg_id")).values(
    payload=bindparam("payload"), n_windows=bindparam("n_windows"), requests=bindparam("requests"),
    errors=bindparam("errors"), updated_at=bindparam("updated_at"))


def _dumps(obj: Any) -> str:
    """orjson's text (a tenth of json.dumps' time) where it writes what json_dumps would mean:
    orjson writes NaN and infinities as null (json_dumps refuses them) and refuses what json_dumps
    takes (ints beyond 64 bits, non-string keys); those payloads go to json_dumps."""
    try:
        out = dumps(obj)
    except TypeError:
        return json_dumps(obj)
    return json_dumps(obj) if b"null" in out else out.decode()


def _errors(merged: dict[str, Any]) -> int:
    return sum(int(v) for v in merged["errors"].values())


class AggregateWriter:
    def __init__(self, engine: Engine) -> None:
        self.postgres = engine.dialect.name == "postgresql"
        self._insert = insert_ignore(engine, _AGG).on_conflict_do_nothing(index_elements=list(KEY))
        self._empty = json_dumps(aggregate.empty())

    def merge(self, conn: Connection, partial: dict[Key, dict[str, Any]], seconds: dict[Key, float],
              ts: float) -> None:
        """Add each partial aggregate payload to its row (created when missing)."""
        keys = sorted(partial)
        if self.postgres:
            self._merge_pg(conn, keys, partial, seconds, ts)
        else:
            self._merge_core(conn, keys, partial, seconds, ts)

    def _merge_pg(self, conn: Connection, keys: list[Key], partial: dict[Key, dict[str, Any]],
                  seconds: dict[Key, float], ts: float) -> None:
        doc = dumps([{**dict(zip(KEY, k, strict=True)), "window_seconds": seconds[k]} for k in keys]).decode()
        raw = conn.connection.driver_connection
        assert raw is not None
        with raw.cursor() as cur:
            cur.execute(_PG_INSERT, [self._empty, ts, doc])
            cur.execute(_PG_SELECT, [doc])
            rows = cur.fetchall()
            if len(rows) != len(keys):
                raise RuntimeError(f"aggregate rows: {len(rows)} locked for {len(keys)} keys")
            merged = [aggregate.merge_into(_loads(text) if text else aggregate.empty(), partial[k])
                      for k, (_, text) in zip(keys, rows, strict=True)]
            cur.execute(_PG_UPDATE, [ts, dumps([
                {"id": r[0], "payload": Fragment(_dumps(m)), "n_windows": m["n_windows"], "requests": m["requests"],
                 "errors": _errors(m)} for r, m in zip(rows, merged, strict=True)]).decode()])

    def _merge_core(self, conn: Connection, keys: list[Key], partial: dict[Key, dict[str, Any]],
                    seconds: dict[Key, float], ts: float) -> None:
        conn.execute(self._insert, [{**dict(zip(KEY, k, strict=True)), "window_seconds": seconds[k], "n_windows": 0,
                                     "requests": 0, "errors": 0, "payload": aggregate.empty(), "updated_at": ts}
                                    for k in keys])
        updates = []
        for k in keys:
            row = conn.execute(_SELECT, {f"k_{c}": v for c, v in zip(KEY, k, strict=True)}).one()
            merged = aggregate.merge_into(dict(row.payload or aggregate.empty()), partial[k])
            updates.append({"agg_id": row.id, "payload": merged, "n_windows": merged["n_windows"],
                            "requests": merged["requests"], "errors": _errors(merged), "updated_at": ts})
        conn.execute(_UPDATE, updates)
