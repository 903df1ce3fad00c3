"""The bounded hand-off between ingest's MQTT thread and its writer: messages go in a read at a
time and come out a batch at a time, with one lock round per read and per batch instead of one
per message (queue.Queue's), and the writer sleeps on the lock instead of polling for a batch.

`unfinished` counts messages taken in and not yet marked done (stored or dropped): drain() and
the heartbeat's backlog read it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any


class Inbox:
    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[Any] = deque()
        self._lock = threading.Lock()
        self._readable = threading.Condition(self._lock)  # items arrived (writer waits)
        self._writable = threading.Condition(self._lock)  # room freed (MQTT thread waits)
        self._want = 1  # the writer is woken once this many items wait
        self.unfinished = 0

    def __len__(self) -> int:
        return len(self._items)

    def put_many(self, items: list[Any], stop: threading.Event) -> bool:
        """Add items, waiting while the inbox is full (back-pressure reaches the broker through
        TCP); False when `stop` was set first."""
        with self._lock:
            while len(self._items) >= self.maxsize:
                if stop.is_set():
                    return False
                self._writable.wait(0.5)
            self._items.extend(items)
            self.unfinished += len(items)
            if len(self._items) >= self._want:
                self._readable.notify()
        return True

    def take(self, most: int, wait_s: float, timeout: float) -> list[Any]:
        """Up to `most` items: waits up to `timeout` for the first, then up to `wait_s` more for
        the batch to fill; [] when none came."""
        with self._lock:
            self._want = 1
            if not self._items:
                self._readable.wait(timeout)
                if not self._items:
                    return []
            deadline = time.monotonic() + wait_s
            self._want = most
            while len(self._items) < most:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._readable.wait(left)
            self._want = 1
            n = min(most, len(self._items))
            batch = [self._items.popleft() for _ in range(n)]
            self._writable.notify_all()
            return batch

    def done(self, n: int) -> None:
        with self._lock:
            self.unfinished -= n
