"""Time partitions for raw telemetry on PostgreSQL (issue 19): `telemetrywindow` is a native
declarative table PARTITION BY RANGE (window_start), one partition per UTC day named
`telemetrywindow_pYYYYMMDD`, plus `telemetrywindow_default` for windows outside every
partition (a device with a wrong clock, an old replay). No extension needed.

Why window_start and not received_at: a redelivered window keeps its window_start, so the
(device_id, seq, window_start) unique key still refuses it; received_at changes per delivery.
Housekeeping creates partitions `DAYS_AHEAD` days ahead; retention drops whole partitions
(no DELETE, no VACUUM debt). SQLite keeps the plain table.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

TABLE = "telemetrywindow"
DEFAULT = f"{TABLE}_default"
DAY = 86400
DAYS_AHEAD = 3
EXACT_COUNT_BELOW = 1_000_000
_NAME = re.compile(rf"^{TABLE}_p(\d{{8}})$")


@dataclass(frozen=True)
class Partition:
    name: str
    start: float
    end: float


def day_partition(at: float) -> Partition:
    start = int(at // DAY) * DAY
    return Partition(f"{TABLE}_p{time.strftime('%Y%m%d', time.gmtime(start))}", float(start), float(start + DAY))


def is_partitioned(conn: Any) -> bool:
    if conn.dialect.name != "postgresql":
        return False
    return bool(conn.execute(text("SELECT EXISTS (SELECT 1 FROM pg_partitioned_table p JOIN pg_class c "
                                  "ON c.oid = p.partrelid WHERE c.relname = :t "
                                  "AND c.relnamespace = to_regnamespace(current_schema()))"), {"t": TABLE}).scalar())


def existing(conn: Any) -> list[Partition]:
    """The day partitions attached now, oldest first (the default partition is not listed)."""
    rows = conn.execute(text("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                             "WHERE i.inhparent = to_regclass(:t)"), {"t": TABLE}).scalars()
    out = []
    for name in rows:
        m = _NAME.match(name)
        if m:
            start = float(calendar.timegm(time.strptime(m.group(1), "%Y%m%d")))
            out.append(Partition(name, start, start + DAY))
    return sorted(out, key=lambda p: p.start)


def ensure(conn: Any, at: float | None = None, days_back: int = 1, days_ahead: int = DAYS_AHEAD) -> list[str]:
    """Create the day partitions from `days_back` before `at` to `days_ahead` after it (and the
    default one); rows the default partition already holds for a new day move into it."""
    if not is_partitioned(conn):
        return []
    at = time.time() if at is None else at
    # several fleet processes run housekeeping: one creates, the others wait and find them made
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('edgefleet-telemetry-partitions'))"))
    conn.execute(text(f"CREATE TABLE IF NOT EXISTS {DEFAULT} PARTITION OF {TABLE} DEFAULT"))
    have = {p.name for p in existing(conn)}
    made = []
    for d in range(-days_back, days_ahead + 1):
        p = day_partition(at + d * DAY)
        if p.name in have:
            continue
        bounds = {"a": p.start, "b": p.end}
        stray = conn.execute(text(f"SELECT EXISTS (SELECT 1 FROM {DEFAULT} WHERE window_start >= :a "
                                  "AND window_start < :b)"), bounds).scalar()
        if not stray:
            conn.execute(text(f"CREATE TABLE {p.name} PARTITION OF {TABLE} FOR VALUES FROM ({p.start}) TO ({p.end})"))
        else:  # the default partition would violate the new bound: move its rows first
            conn.execute(text(f"CREATE TABLE {p.name} (LIKE {TABLE} INCLUDING DEFAULTS)"))
            conn.execute(text(f"WITH moved AS (DELETE FROM {DEFAULT} WHERE window_start >= :a AND window_start < :b "
                              f"RETURNING *) INSERT INTO {p.name} SELECT * FROM moved"), bounds)
            conn.execute(text(f"ALTER TABLE {TABLE} ATTACH PARTITION {p.name} FOR VALUES FROM ({p.start}) "
                              f"TO ({p.end})"))
        made.append(p.name)
    return made


def drop_older(conn: Any, cutoff: float) -> tuple[int, int]:
    """Drop day partitions that end at or before `cutoff` (rows counted exactly in small ones,
    by the planner's estimate in big ones: counting would read all the data being dropped) and delete the
    default partition's older rows; returns (partitions dropped, rows removed)."""
    if not is_partitioned(conn):
        return 0, 0
    dropped, rows = 0, 0
    for p in existing(conn):
        if p.end > cutoff:
            break
        est = conn.execute(text("SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = to_regclass(:n)"),
                           {"n": p.name}).scalar()
        if (est or 0) < EXACT_COUNT_BELOW:
            est = conn.execute(text(f"SELECT count(*) FROM {p.name}")).scalar()
        conn.execute(text(f"DROP TABLE {p.name}"))
        dropped, rows = dropped + 1, rows + int(est or 0)
    n = conn.execute(text(f"DELETE FROM {DEFAULT} WHERE window_start < :c AND received_at < :c"), {"c": cutoff})
    return dropped, rows + int(n.rowcount or 0)


def table_bytes(conn: Any) -> int:
    """On-disk size of raw telemetry (all partitions with indexes and TOAST), or the plain table."""
    if conn.dialect.name != "postgresql":
        return 0
    if is_partitioned(conn):
        return int(conn.execute(text("SELECT coalesce(sum(pg_total_relation_size(relid)), 0) "
                                     "FROM pg_partition_tree(to_regclass(:t))"), {"t": TABLE}).scalar() or 0)
    return int(conn.execute(text("SELECT pg_total_relation_size(to_regclass(:t))"), {"t": TABLE}).scalar() or 0)
