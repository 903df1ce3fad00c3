"""The fleet's scheduled governance jobs (issue 16), run by `serve` every
`lifecycle.housekeeping_interval_s`: overdue model reviews (gauge + audit), retention, and the
raw-telemetry day partitions created ahead on PostgreSQL (fleet.ingest.partitions)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from fleet.catalogue import reviews
from fleet.ingest import partitions, retention

log = logging.getLogger(__name__)


def run_once(ctx: Any, at: float | None = None) -> dict[str, Any]:
    at = time.time() if at is None else at
    with ctx.session() as db:
        overdue = reviews.check_overdue(db, at, ctx.settings.lifecycle.review_interval_days)
    with ctx.session() as db:
        created = partitions.ensure(db.connection(), at)
    with ctx.session() as db:
        deleted = retention.apply(db, ctx.settings, at)
    if any(deleted.values()):
        log.info("retention deleted %s", deleted)
    return {"overdue_reviews": [s.name for s in overdue], "deleted": deleted, "partitions_created": created}


def start(ctx: Any, stop: threading.Event) -> threading.Thread:
    """A daemon thread: one run every interval (the first after one interval, so a restart loop
    never hammers the database) until `stop` is set."""
    interval = max(1.0, ctx.settings.lifecycle.housekeeping_interval_s)

    def loop() -> None:
        while not stop.wait(interval):
            try:
                run_once(ctx)
            except Exception:  # noqa: BLE001 - try again next interval
                log.exception("housekeeping failed")

    t = threading.Thread(target=loop, name="edgefleet-housekeeping", daemon=True)
    t.start()
    return t
