"""What ingest keeps for rollouts, so that rollout evidence never reads raw windows:

- the wave tag of each stored window ("<rollout id>:<wave index>" while its device is a target of
  an open rollout of the window's model, "" otherwise), an aggregate key column: a wave's
  candidate and control telemetry are sums of Aggregate rows (fleet.rollouts.wave_telemetry);
- how many windows each device sent per (model, role, version), from when to when
  (DeviceVersionWindows): the reporting gate's per-device count and model health's devices.

Tags are cached per device. The set of open rollouts is read with every batch (one query on a
small table); when it changed, the cache is cleared and each device's tags are read again, in one
query per batch, the first time it reports. A rollout's targets are written in the transaction
that creates it, so a device's tags change only when that set does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from orjson import dumps
from sqlalchemy import select, text
from sqlalchemy.engine import Connection, Engine

from fleet.rollouts.models import Rollout, RolloutTarget
from fleet.rollouts.states import OPEN_ROLLOUTS

CHUNK = 500
_NONE: Mapping[str, str] = {}
_OPEN = select(Rollout.id).where(Rollout.status.in_([str(s) for s in OPEN_ROLLOUTS])).order_by(Rollout.id)
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
# Python, about 1.4 us each, which was most of this module's cost per window
_PG_RUNS = (f"INSERT INTO device_version_windows ({', '.join(_RUN_COLS)}) SELECT {', '.join(_RUN_COLS)} "
            "FROM json_populate_recordset(NULL::device_version_windows, %s::json) " + _UPSERT_SET)
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

    def record(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> list[str]:
        """Count these stored window rows per device and version; returns each row's wave tag."""
        if not rows:
            return []
        self._refresh(conn, {r["device_id"] for r in rows})
        self._write_runs(conn, rows)
        return [self._tags[r["device_id"]].get(r["model_name"], "") for r in rows]

    def _refresh(self, conn: Connection, devices: set[str]) -> None:
        now_open = tuple(conn.execute(_OPEN).scalars())
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

    def _write_runs(self, conn: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        runs: dict[tuple[str, str, str, int], list[Any]] = {}
        for r in rows:
            key = (r["device_id"], r["model_name"], r["role"], r["model_version"])
            start, end = float(r["window_start"]), float(r["window_end"])
            run = runs.get(key)
            if run is None:
                runs[key] = [*key, r["device_class"], start, end, 1]
            else:
                run[5], run[6], run[7] = min(run[5], start), max(run[6], end), run[7] + 1
        ordered = [dict(zip(_RUN_COLS, runs[k], strict=True)) for k in sorted(runs)]  # one lock order everywhere
        if self.postgres:
            raw = conn.connection.driver_connection
            assert raw is not None
            with raw.cursor() as cur:
                cur.execute(_PG_RUNS, [dumps(ordered).decode()])
            return
        conn.execute(_LITE_RUNS, ordered)
