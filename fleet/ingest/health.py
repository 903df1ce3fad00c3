"""Is the fleet seeing its devices? Ingest processes write a heartbeat row each second
(IngestHeartbeat); the rollout evaluator asks `blindness()` before judging a wave, so a broker
outage or an ingest restart makes waves wait ("waiting: ingest disconnected") instead of failing
them for evidence that could not arrive, and stops their clocks.

Rules, per ingest identity seen in the last IGNORE_AFTER_S:
* fresh (beat within STALE_AFTER_S), connected, connected for CATCH_UP_S, queue short: sees.
* fresh but disconnected: blind (ingest-disconnected).
* fresh, connected, but just reconnected or its queue is backed up: blind (ingest-catching-up):
  the broker is still delivering what devices sent during the gap.
* stale (crashed, or stopped) with a persistent session still alive at the broker: blind
  (ingest-away) until it comes back or the session expires, since its share of telemetry is
  queued for it and reaches nobody else.
* identities are known but none of them is seeing: blind (no-ingest).
No rows at all (ingest runs elsewhere, unit tests) means "not known to be blind".
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, update
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, select

from fleet.rollouts.models import (
    WAIT_INGEST_AWAY,
    WAIT_INGEST_CATCHING_UP,
    WAIT_INGEST_DISCONNECTED,
    WAIT_NO_INGEST,
    IngestHeartbeat,
)

log = logging.getLogger(__name__)
BEAT_S = 1.0
STALE_AFTER_S = 5.0          # no beat for this long: the process is gone
CATCH_UP_S = 3.0             # after a (re)connect the broker replays queued messages first
LAG_MAX_MESSAGES = 5000      # queue depth over which ingest counts as lagging
IGNORE_AFTER_S = 600.0       # identities silent longer than this are forgotten

MESSAGES = {
    WAIT_INGEST_DISCONNECTED: "ingest disconnected",
    WAIT_INGEST_CATCHING_UP: "ingest catching up",
    WAIT_INGEST_AWAY: "ingest away (its persistent session queues telemetry)",
    WAIT_NO_INGEST: "no ingest running",
}


@dataclass(frozen=True)
class Blindness:
    kind: str          # one of the WAIT_* constants
    ingest: str        # the identity concerned ("" for no-ingest)
    since: float | None

    @property
    def message(self) -> str:
        return f"waiting: {MESSAGES.get(self.kind, self.kind)}" + (f" ({self.ingest})" if self.ingest else "")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "ingest": self.ingest, "since": self.since, "message": self.message}


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def row_blindness(row: IngestHeartbeat, at: float) -> Blindness | None:
    """Why this ingest identity leaves the fleet blind at `at`, or None when it sees."""
    if at - row.updated_at > STALE_AFTER_S:
        away_until = row.updated_at + row.session_expiry_s
        if row.session_expiry_s > 0 and at < away_until:
            return Blindness(WAIT_INGEST_AWAY, row.name, row.updated_at)
        return None
    if not row.connected:
        return Blindness(WAIT_INGEST_DISCONNECTED, row.name, row.updated_at)
    if row.connected_since is not None and at - row.connected_since < CATCH_UP_S:
        return Blindness(WAIT_INGEST_CATCHING_UP, row.name, row.connected_since)
    if row.queue_depth > LAG_MAX_MESSAGES:
        return Blindness(WAIT_INGEST_CATCHING_UP, row.name, row.updated_at)
    return None


def blindness(session: Session, at: float | None = None) -> Blindness | None:
    """None when the fleet sees (or nothing is known); else the first reason it is blind."""
    at = time.time() if at is None else at
    rows = session.exec(select(IngestHeartbeat).where(IngestHeartbeat.updated_at >= at - IGNORE_AFTER_S)).all()
    if not rows:
        return None
    seeing = False
    for row in sorted(rows, key=lambda r: r.name):
        b = row_blindness(row, at)
        if b is not None:
            return b
        seeing = seeing or at - row.updated_at <= STALE_AFTER_S
    if not seeing:
        return Blindness(WAIT_NO_INGEST, "", max(r.updated_at for r in rows))
    return None


_TABLE = IngestHeartbeat.__table__  # type: ignore[attr-defined]
_UPDATE = update(_TABLE).where(_TABLE.c.name == bindparam("hb_name"))  # SET: the columns passed


def _closed(conn: Connection | None) -> None:
    if conn is not None:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - already broken
            pass


class Heartbeat:
    """Writes one ingest identity's row every BEAT_S from a daemon thread."""

    def __init__(self, engine: Engine, name: str, session_expiry_s: int, probe: Any) -> None:
        self.engine, self.name, self.session_expiry_s = engine, name, session_expiry_s
        self.probe = probe            # callable -> (connected: bool, connected_since: float|None, queue: int)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, stopped: bool = False, conn: Connection | None = None) -> None:
        """One UPDATE (an INSERT the first time), on `conn` (the beating thread's own autocommit
        connection) when given: a pooled transaction per beat cost ~0.9 ms of CPU every second in
        every ingest process, most of ingest's fixed cost at a few hundred windows a second; this
        costs ~0.2 ms."""
        connected, since, depth = self.probe()
        values = {"owner": owner_id(), "connected": bool(connected) and not stopped, "connected_since": since,
                  "queue_depth": int(depth), "session_expiry_s": int(self.session_expiry_s), "stopped": stopped,
                  "updated_at": time.time()}
        if conn is not None and conn.execute(_UPDATE, {**values, "hb_name": self.name}).rowcount:
            return
        with self.engine.begin() as tx:
            if not tx.execute(_UPDATE, {**values, "hb_name": self.name}).rowcount:
                tx.execute(insert(_TABLE).values(name=self.name, **values))

    def _run(self) -> None:
        conn: Connection | None = None
        while not self._stop.wait(BEAT_S):
            try:
                if conn is None:
                    conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                self.beat(conn=conn)
            except Exception:  # noqa: BLE001 - a database blip must not stop ingest
                log.warning("ingest heartbeat failed", exc_info=True)
                conn = _closed(conn)  # a fresh connection next beat (the database may have restarted)
        _closed(conn)

    def start(self) -> Heartbeat:
        try:
            self.beat()
        except Exception:  # noqa: BLE001
            log.warning("ingest heartbeat failed", exc_info=True)
        self._thread = threading.Thread(target=self._run, name="edgefleet-ingest-heartbeat", daemon=True)
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(5)
        self._thread = None
        try:
            self.beat(stopped=True)
        except Exception:  # noqa: BLE001
            log.warning("ingest heartbeat (stop) failed", exc_info=True)
