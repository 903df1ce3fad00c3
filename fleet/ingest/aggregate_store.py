"""Fold a batch's partial aggregates into the aggregate table, in the batch's transaction.

Each key (model, version, role, class, cohort, slot, rollout wave) is inserted empty if new, locked, merged in
Python (fleet.ingest.aggregate.merge_into) and written back. Keys are handled in sorted order,
so two ingest processes merging overlapping keys lock them in the same order and never deadlock.

PostgreSQL: three statements per batch whatever the number of keys (insert the missing keys from
unnest arrays, lock and read them in one SELECT ... ORDER BY ... FOR UPDATE with the payloads as
text for orjson, one UPDATE from arrays). SQLite (one writer at a time): SQLAlchemy Core, a
SELECT per key.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection, Engine

from fleet.db import json_dumps
from fleet.ingest import aggregate
from fleet.ingest.records import insert_ignore
from fleet.models import Aggregate

try:
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - the fleet extra installs orjson
    from json import loads as _loads

KEY = ("model_name", "model_version", "role", "device_class", "cohort", "window_start", "wave")
Key = tuple[Any, ...]
_AGG = Aggregate.__table__  # type: ignore[attr-defined]
_KEY_ARRAYS = "%b::text[], %b::int[], %b::text[], %b::text[], %b::text[], %b::float8[], %b::text[]"
_PG_INSERT = (f"INSERT INTO aggregate ({', '.join(KEY)}, window_seconds, n_windows, requests, errors, payload, "
              f"updated_at) SELECT k.*, 0, 0, 0, %s::json, %s FROM unnest({_KEY_ARRAYS}, %b::float8[]) AS k "
              f"ON CONFLICT ({', '.join(KEY)}) DO NOTHING")
# ordinality = our sorted order; the row locks are taken in it (LockRows sits above the sort)
_PG_SELECT = (f"SELECT a.id, a.payload::text FROM aggregate a JOIN unnest({_KEY_ARRAYS}) WITH ORDINALITY "
              f"AS k({', '.join(KEY)}, i) USING ({', '.join(KEY)}) ORDER BY k.i FOR UPDATE OF a")
_PG_UPDATE = ("UPDATE aggregate a SET payload = u.payload, n_windows = u.n, requests = u.r, errors = u.e, "
              "updated_at = %s FROM unnest(%b::int8[], %b::json[], %b::int8[], %b::int8[], %b::int8[]) "
              "AS u(id, payload, n, r, e) WHERE a.id = u.id")
_SELECT = select(_AGG.c.id, _AGG.c.payload).where(*[_AGG.c[c] == bindparam(f"k_{c}") for c in KEY]).with_for_update()
_UPDATE = update(_AGG).where(_AGG.c.id == bindparam("agg_id")).values(
    payload=bindparam("payload"), n_windows=bindparam("n_windows"), requests=bindparam("requests"),
    errors=bindparam("errors"), updated_at=bindparam("updated_at"))


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
        cols = [list(c) for c in zip(*keys, strict=True)]
        raw = conn.connection.driver_connection
        assert raw is not None
        with raw.cursor() as cur:
            cur.execute(_PG_INSERT, [self._empty, ts, *cols, [seconds[k] for k in keys]])
            cur.execute(_PG_SELECT, cols)
            rows = cur.fetchall()
            if len(rows) != len(keys):
                raise RuntimeError(f"aggregate rows: {len(rows)} locked for {len(keys)} keys")
            merged = [aggregate.merge_into(_loads(text) if text else aggregate.empty(), partial[k])
                      for k, (_, text) in zip(keys, rows, strict=True)]
            cur.execute(_PG_UPDATE, [ts, [r[0] for r in rows], [json_dumps(m) for m in merged],
                                     [m["n_windows"] for m in merged], [m["requests"] for m in merged],
                                     [_errors(m) for m in merged]])

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
