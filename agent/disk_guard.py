"""Fail-soft writes when the device's disk fills.

A full disk must not stop a device from serving the model it has loaded: status, outbox and log
writes that fail with ENOSPC (or SQLite's "database or disk is full") are counted here instead of
raised, the agent logs one line when the disk fills and one when it recovers, and the state is
reported in health (`status()`) and once per telemetry window (`resources.disk_full`). The next
successful write clears it, so everything resumes by itself when space returns.
"""

from __future__ import annotations

import errno
import logging
import shutil
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT from the OS, or SQLite's own words for it (sqlite3.OperationalError/DatabaseError)."""
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    text = str(exc).lower()
    return type(exc).__module__ == "sqlite3" and ("disk is full" in text or "disk i/o error" in text)


class DiskGuard:
    """Counts failed writes per kind; `full` from the first failure to the next successful write."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.full = False
        self.failures: Counter[str] = Counter()  # since start, by what was written
        self._window_failures = 0
        self._full_in_window = False

    def failed(self, what: str, exc: BaseException) -> bool:
        """Record `exc` if the disk is full and return True (the caller drops the write); else False."""
        if not is_disk_full(exc):
            return False
        with self._lock:
            self.failures[what] += 1
            self._window_failures += 1
            self._full_in_window = True
            first = not self.full
            self.full = True
        if first:
            log.error("event=disk-full what=%s error=%s: still serving; status, outbox and log writes are"
                      " dropped and counted until space returns", what, exc)
        return True

    def attempt(self, what: str, write: Callable[[], Any]) -> bool:
        """Run `write`; False when the disk is full (counted, the caller retries later), True when
        it succeeded. Other errors are raised."""
        try:
            write()
        except Exception as exc:
            if not self.failed(what, exc):
                raise
            return False
        self.ok()
        return True

    def ok(self) -> bool:
        """A write succeeded: the disk has room again. True when this ends a full-disk period."""
        if not self.full:
            return False
        with self._lock:
            was, self.full = self.full, False
        if was:
            log.warning("event=disk-recovered failed_writes=%s", dict(self.failures))
        return was

    def health(self) -> dict[str, Any]:
        return {"disk_full": self.full, "disk_write_failures": sum(self.failures.values())}

    def window_report(self) -> dict[str, Any]:
        """For one telemetry window: was the disk full at any time in it, and how many writes failed."""
        with self._lock:
            report: dict[str, Any] = {"disk_full": self._full_in_window or self.full,
                                      "disk_write_failures": self._window_failures}
            self._window_failures = 0
            self._full_in_window = self.full
        if self.path is not None:
            try:
                report["disk_free_mb"] = round(shutil.disk_usage(self.path).free / 2**20, 1)
            except OSError:
                report["disk_free_mb"] = None
        return report
