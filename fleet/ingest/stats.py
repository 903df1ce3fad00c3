"""Ingest's counters: per-process totals (IngestStats, the API's /api/ingest/stats) and one
batch's counts (Tally), added to the totals and the Prometheus metrics once per batch."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class IngestStats:
    received: Counter[str] = field(default_factory=Counter)
    stored: Counter[str] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    # CPU seconds by stage (thread CPU time, taken per batch): parse = decode, verify and shape
    # checks (verify threads included); aggregate = merging and the aggregate rows; store = the rest
    # of storing (client side). What a process spent beyond these is receiving (MQTT thread).
    cpu_s: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"received": dict(self.received), "stored": dict(self.stored),
                    "duplicates": dict(self.duplicates), "dropped": dict(self.dropped), "batches": self.batches,
                    "cpu_s": dict(self.cpu_s)}


class Tally:
    """Counts of one batch, added to the stats and metrics once (a lock and a metric per
    message would cost more than parsing it)."""

    __slots__ = ("received", "dropped", "cpu_s")

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.cpu_s = 0.0
