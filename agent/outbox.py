"""Store and forward: a bounded SQLite queue of signed messages waiting for a broker PUBACK.

Messages are kept oldest first and deleted only when the broker acknowledged them. When the
queue is full the oldest telemetry window is dropped and counted (`dropped_windows`, persisted
and reported in every telemetry payload), so memory and disk stay bounded. The same database
holds the device's message sequence counter, so `seq` stays strictly increasing across restarts
and is assigned in the same transaction that stores the message.

At rest every row is sealed (agent.sealed, AES-GCM under the device's storage key): the payload
column holds sealed(topic NUL payload) and the topic column is empty, so neither telemetry, raw
samples nor the device's topics are readable from a copied disk. Rows that older versions stored
in plaintext are sealed when the outbox opens (with SQLite's secure_delete, so the old pages are
overwritten), and a store sealed under another key is refused with one clear line, not dropped.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.config import AgentConfig, ConfigError
from agent.private_files import private_file
from agent.sealed import RECORD_MAGIC, Sealer, SealError, WrongKeyError

log = logging.getLogger(__name__)

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


def _purpose(kind: str) -> bytes:
    return b"edgefleet/outbox\x00" + kind.encode()


class Outbox:
    def __init__(self, path: Path, max_messages: int = 10000, sealer: Sealer | None = None) -> None:
        """`sealer` None keeps rows in plaintext (unit tests of the queue alone); the agent seals."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        private_file(self.path)  # 0600 before SQLite opens it; its -wal/-shm files inherit the mode
        self.max_messages = max_messages
        self.sealer = sealer
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            if sealer is not None:
                self._check_key(sealer)
                self._seal_legacy_rows(sealer)
        except BaseException:
            self._db.close()
            raise
        self.new_message = threading.Event()

    def _check_key(self, sealer: Sealer) -> None:
        kids = {bytes(r[0]) for r in self._db.execute(
            "SELECT DISTINCT substr(payload, 5, 8) FROM outbox WHERE topic = '' AND substr(payload, 1, 4) = ?",
            (RECORD_MAGIC,))}
        other = kids - {sealer.key_id}
        if other:
            n = self._db.execute("SELECT COUNT(*) FROM outbox WHERE topic = ''").fetchone()[0]
            raise WrongKeyError(f"outbox {self.path} holds {n} message(s) sealed with storage key "
                                f"{sorted(other)[0].hex()}, but the key from {sealer.source} is {sealer.key_id_hex}: "
                                f"restore the original storage key (or move the outbox away to start empty)")

    def _seal_legacy_rows(self, sealer: Sealer) -> None:
        """Plaintext rows from before encryption at rest: seal them in place, then overwrite the
        freed pages and truncate the WAL so no plaintext copy stays in the file."""
        rows = self._db.execute("SELECT id, topic, payload, kind FROM outbox WHERE topic != ''").fetchall()
        if not rows:
            return
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("UPDATE outbox SET topic = '', payload = ? WHERE id = ?",
                                 [(self._seal(sealer, t, bytes(p), k), i) for i, t, p, k in rows])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("VACUUM")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.execute("PRAGMA secure_delete=OFF")
        log.info("event=outbox-sealed-legacy rows=%d path=%s", len(rows), self.path)

    @staticmethod
    def _seal(sealer: Sealer, topic: str, payload: bytes, kind: str) -> bytes:
        return sealer.seal(topic.encode() + b"\x00" + payload, _purpose(kind))

    def _open_row(self, row: tuple) -> Message | None:  # type: ignore[type-arg]
        msg_id, topic, payload, kind, retain = row
        payload = bytes(payload)
        if topic:  # plaintext: written without a sealer
            return Message(msg_id, topic, payload, kind, bool(retain))
        if self.sealer is None:
            raise SealError(f"outbox {self.path} holds sealed messages but no storage key was given")
        try:
            plain = self.sealer.open(payload, _purpose(kind), f"outbox message {msg_id}")
        except WrongKeyError:
            raise
        except SealError as exc:  # one damaged row must not block the queue forever
            log.error("event=outbox-row-unreadable id=%s reason=%s", msg_id, exc)
            self._db.execute("DELETE FROM outbox WHERE id = ?", (msg_id,))
            self._set_meta("unreadable", self._meta("unreadable") + 1)
            return None
        topic_b, _, body = plain.partition(b"\x00")
        return Message(msg_id, topic_b.decode(), body, kind, bool(retain))

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
                if self._db.in_transaction:  # a full disk can fail COMMIT after SQLite rolled back itself
                    self._db.execute("ROLLBACK")
                raise
            return seq

    def put(self, topic: str, build: Callable[[int], bytes], kind: str = "telemetry", retain: bool = False) -> int:
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
                if self.sealer is not None:
                    topic, payload = "", self._seal(self.sealer, topic, payload, kind)
                self._db.execute("INSERT INTO outbox(topic, payload, kind, retain, created) VALUES(?,?,?,?,?)",
                                 (topic, payload, kind, int(retain), time.time()))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a full disk can fail COMMIT after SQLite rolled back itself
                    self._db.execute("ROLLBACK")
                raise
        self.new_message.set()
        return seq

    def pending(self, after_id: int = 0, limit: int = 100) -> list[Message]:
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload, kind, retain FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                                    (after_id, limit)).fetchall()
            msgs = [self._open_row(r) for r in rows]
        return [m for m in msgs if m is not None]

    def ack(self, msg_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE id = ?", (msg_id,))

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def open_outbox(cfg: AgentConfig) -> Outbox:
    """The agent's outbox, state_dir/outbox.sqlite, sealed with the device's storage key. A missing
    key is created; an unusable key or a store sealed under another key is a ConfigError (exit 2)."""
    try:
        return Outbox(cfg.state_path / "outbox.sqlite", cfg.mqtt.outbox_max_messages, sealer=cfg.storage_sealer())
    except SealError as exc:
        raise ConfigError(f"storage: {exc}") from None
