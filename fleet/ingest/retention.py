"""Retention by age (issue 16): the fleet deletes what its policy no longer keeps, on a schedule
(fleet.catalogue.housekeeping). Raw per-device telemetry windows follow `ingest.retention_days`;
aggregates (and the per-device window counts rollouts read beside them), device events and the
audit log follow `lifecycle.*_retention_days` (0 keeps forever). Each run that deletes anything leaves an audit entry saying how much and why.
On PostgreSQL raw windows are day partitions (fleet.ingest.partitions): whole days are dropped."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import delete
from sqlmodel import Session

from fleet import audit
from fleet.ingest import partitions
from fleet.models import Aggregate, AuditEntry, DeviceEvent, DeviceVersionWindows, TelemetryWindow
from fleet.settings import FleetSettings

DAY = 86400.0


def policy(settings: FleetSettings) -> list[tuple[str, Any, Any, float]]:
    """(what, table, age column, days) for every kind of data with a retention period."""
    lc = settings.lifecycle
    return [("raw telemetry windows", TelemetryWindow, TelemetryWindow.received_at, settings.ingest.retention_days),
            ("telemetry aggregates", Aggregate, Aggregate.window_start, lc.aggregate_retention_days),
            ("device window counts", DeviceVersionWindows, DeviceVersionWindows.last_end,
             lc.aggregate_retention_days),
            ("device events", DeviceEvent, DeviceEvent.received_at, lc.event_retention_days),
            ("audit entries", AuditEntry, AuditEntry.at, lc.audit_retention_days)]


def apply(db: Session, settings: FleetSettings, at: float | None = None) -> dict[str, int]:
    """Delete rows older than their retention; returns the count per kind (audited when > 0)."""
    at = time.time() if at is None else at
    deleted: dict[str, int] = {}
    for what, table, column, days in policy(settings):
        if days and days > 0 and table is TelemetryWindow and partitions.is_partitioned(db.connection()):
            deleted[what] = partitions.drop_older(db.connection(), at - days * DAY)[1]
        elif days and days > 0:
            n = db.execute(delete(table).where(column < at - days * DAY)).rowcount
            deleted[what] = int(n or 0)
    if any(deleted.values()):
        audit.record(db, "retention", "retention.apply", "fleet", None,
                     {"deleted": deleted, "days": {w: d for w, _, _, d in policy(settings)}})
    return deleted
