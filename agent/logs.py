"""Structured logging: one line per record, `key=value` pairs (messages are written that way),
or JSON lines with EDGEFLEET_LOG_FORMAT=json."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable

# Called with the exception when a log line cannot be written (a full disk under a redirected
# stderr); the agent counts it (agent.disk_guard) instead of printing a traceback per record.
_write_error_hook: Callable[[BaseException], object] | None = None


def set_write_error_hook(fn: Callable[[BaseException], object] | None) -> None:
    global _write_error_hook
    _write_error_hook = fn


class FailSoftStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler whose failed writes are counted, not printed (logging's default)."""

    failures = 0

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handleError(record)
            return
        FailSoftStreamHandler.failures += 1
        hook = _write_error_hook
        if hook is not None:
            try:
                hook(exc)
            except Exception:  # noqa: BLE001 - logging must never raise into the agent
                pass


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "msg": record.getMessage()}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(level: str = "INFO", device_id: str = "") -> None:
    handler = FailSoftStreamHandler(sys.stderr)
    if os.environ.get("EDGEFLEET_LOG_FORMAT") == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            f"time=%(asctime)s level=%(levelname)s device={device_id or '-'} logger=%(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("paho").setLevel(logging.WARNING)
