"""What ingest keeps for rollouts, so that rollout evidence never reads raw windows:

- the wave tag of each stored window ("<rollout id>:<wave index>" while its device is a target of
  an open rollout of the window's model, "" otherwise), an aggregate key column: a wave's
  candidate and control telemetry are sums of Aggregate rows (fleet.rollouts.wave_telemetry);
- how many windows each device sent per (model, role, version), from when to when
  (DeviceVersionWindows): the reporting gate's per-device count and model health's devices.

Tags are cached per device. The set of open rollouts is read with every batch (a small table; on
PostgreSQL in the statement that writes the runs); when it changed, the cache is cleared and each device's tags are read again, in one
query per batch, the first time it reports. A rollout's targets are written in the transaction
that creates it, so a device's tags change only when that set does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from orjson import dumps
from sqlalchemy import select, text
from sqlalchemy.engine import Connection, Engine

from fleet.ingest.window_insert import CLASS, DEVICE, END, MODEL, ROLE, START, VERSION, Row
from fleet.rollouts.models import Rollout, RolloutTarget
from fleet.rollouts.states import OPEN_ROLLOUTS

CHUNK = 500
_NONE: Mapping[str, str] = {}
_OPEN = select(Rollout.id).where(Rollout.status.in_([str(s) for s in OPEN_ROLLOUTS])).order_by(Rollout.id)
_PG_OPEN = (f"SELECT id FROM {Rollout.__tablename__} WHERE status IN "
            f"({', '.join(chr(39) + str(s) + chr(39) for s in OPEN_ROLLOUTS)}) ORDER BY id")
_RUN_COLS = ("device_id", "model_name", "role", "model_version", "device_class", "first_start", "last_end",
             "windows")
_UPSERT_SET = (
    "ON CONFLICT (device_id, model_name, role, model_version) DO UPDATE SET "
    "windows = device_version_windows.windows + excluded.windows, device_class = excluded.device_class, "
    "first_start = CASE WHEN excluded.first_start < device_version_windows.first_start "
    "THEN excluded.first_start ELSE device_version_windows.first_start END, "
    "last_end = CASE WHEN excluded.last_end > device_version_windows.last_end "
    "THEN excluded.last_end ELSE device_version_windows.last_end END")
# one JSON document (dumped by orjson) instead of eight arrays: psycopg dumps array elements in
# Python, about 1.4 us each, which was most of this module's cost per window; the same statement
# reads the open rollouts (one round trip for both)
_PG_RUNS = (f"WITH runs AS (INSERT INTO device_version_windows ({', '.join(_RUN_COLS)}) SELECT {', '.join(_RUN_COLS)} "
            "FROM json_populate_recordset(NULL::device_version_windows, %s::json) " + _UPSERT_SET + ") " + _PG_OPEN)
_LITE_RUNS = text(f"INSERT INTO device_version_windows ({', '.join(_RUN_COLS)}) "
                  f"VALUES ({', '.join(':' + c for c in _RUN_COLS)}) " + _UPSERT_SET)


def wave_tag(rollout_id: int, wave_index: int) -> str:
    """The aggregate `wave` value of a rollout wave's devices."""
    return f"{rollout_id}:{wave_index}"


class RolloutView:
    """Per telemetry batch, in its transaction: the windows' wave tags and the device runs."""

    def __init__(self, engine: Engine) -> None:
        self.postgres = engine.dialect.name == "postgresql"
        self._open: tuple[int, ...] | None = None
        self._tags: dict[str, Mapping[str, str]] = {}  # device -> {model name: wave tag}

    def record(self, conn: Connection, rows: Sequence[Row]) -> list[str]:
        """Count these stored window rows (fleet.ingest.window_insert tuples) per device and
        version; returns each row's wave tag."""
        if not rows:
            return []
        self._refresh(conn, self._write_runs(conn, rows), {r[DEVICE] for r in rows})
        tags = self._tags
        return [tags[r[DEVICE]].get(r[MODEL], "") for r in rows]

    def _refresh(self, conn: Connection, now_open: tuple[int, ...], devices: set[str]) -> None:
        if now_open != self._open:
            self._open, self._tags = now_open, {}
        missing = sorted(d for d in devices if d not in self._tags)
        if not missing:
            return
        found: dict[str, dict[str, str]] = {}
        if self._open:
            q = (select(RolloutTarget.device_id, Rollout.model_name, RolloutTarget.rollout_id, RolloutTarget.wave_index)
                 .join(Rollout, Rollout.id == RolloutTarget.rollout_id).where(Rollout.id.in_(self._open)))
            for i in range(0, len(missing), CHUNK):
                for dev, model, rid, wave in conn.execute(q.where(RolloutTarget.device_id.in_(missing[i:i + CHUNK]))):
                    found.setdefault(dev, {})[model] = wave_tag(rid, wave)
        for d in missing:
            self._tags[d] = found.get(d, _NONE)

    def _write_runs(self, conn: Connection, rows: Iterable[Row]) -> tuple[int, ...]:
        """Upsert the rows' device runs; returns the open rollouts (read in the same statement)."""
        runs: dict[tuple[str, str, str, int], dict[str, Any]] = {}  # the rows of _RUN_COLS, by key
        for r in rows:
            key = (r[DEVICE], r[MODEL], r[ROLE], r[VERSION])
            run = runs.get(key)
            if run is None:
                runs[key] = {"device_id": key[0], "model_name": key[1], "role": key[2], "model_version": key[3],
                             "device_class": r[CLASS], "first_start": r[START], "last_end": r[END], "windows": 1}
            else:
                run["first_start"], run["last_end"] = min(run["first_start"], r[START]), max(run["last_end"], r[END])
                run["windows"] += 1
        ordered = [runs[k] for k in sorted(runs)]  # one lock order everywhere
        if self.postgres:
            raw = conn.connection.driver_connection
            assert raw is not None
            with raw.cursor() as cur:
                cur.execute(_PG_RUNS, [dumps(ordered).decode()])
                return tuple(r[0] for r in cur.fetchall())
        conn.execute(_LITE_RUNS, ordered)
        return tuple(conn.execute(_OPEN).scalars())
