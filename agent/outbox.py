"""Store and forward: a bounded SQLite queue of signed messages waiting for a broker PUBACK.

Messages are kept oldest first and deleted only when the broker acknowledged them. When the
queue is full the oldest telemetry window is dropped and counted (`dropped_windows`, persisted
and reported in every telemetry payload), so memory and disk stay bounded. The same database
holds the device's message sequence counter, so `seq` stays strictly increasing across restarts
and is assigned in the same transaction that stores the message.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    kind TEXT NOT NULL,
    retain INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Message:
    id: int
    topic: str
    payload: bytes
    kind: str
    retain: bool


class Outbox:
    def __init__(self, path: Path, max_messages: int = 10000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self.new_message = threading.Event()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                         (key, value))

    @property
    def dropped_windows(self) -> int:
        with self._lock:
            return self._meta("dropped_windows")

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._meta("seq")

    def next_seq(self) -> int:
        """A sequence number for a message that does not go through the queue (retained state)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._meta("seq") + 1
                self._set_meta("seq", seq)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return seq

    def put(self, topic: str, build: callable, kind: str = "telemetry", retain: bool = False) -> int:  # type: ignore[valid-type]
        """Store `build(seq)` (bytes) under a fresh seq; drops the oldest telemetry when full."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._meta("seq") + 1
                self._set_meta("seq", seq)
                n = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
                if n >= self.max_messages:
                    excess = n - self.max_messages + 1
                    rows = self._db.execute(
                        "SELECT id FROM outbox ORDER BY (kind = 'telemetry') DESC, id LIMIT ?", (excess,)).fetchall()
                    self._db.executemany("DELETE FROM outbox WHERE id = ?", rows)
                    self._set_meta("dropped_windows", self._meta("dropped_windows") + len(rows))
                payload = build(seq)
                self._db.execute("INSERT INTO outbox(topic, payload, kind, retain, created) VALUES(?,?,?,?,?)",
                                 (topic, payload, kind, int(retain), time.time()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self.new_message.set()
        return seq

    def pending(self, after_id: int = 0, limit: int = 100) -> list[Message]:
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload, kind, retain FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                                    (after_id, limit)).fetchall()
        return [Message(r[0], r[1], bytes(r[2]), r[3], bool(r[4])) for r in rows]

    def ack(self, msg_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE id = ?", (msg_id,))

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
