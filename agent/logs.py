"""Structured logging: one line per record, `key=value` pairs (messages are written that way),
or JSON lines with EDGEFLEET_LOG_FORMAT=json."""

from __future__ import annotations

import json
import logging
import os
import sys


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "msg": record.getMessage()}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(level: str = "INFO", device_id: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("EDGEFLEET_LOG_FORMAT") == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            f"time=%(asctime)s level=%(levelname)s device={device_id or '-'} logger=%(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("paho").setLevel(logging.WARNING)
