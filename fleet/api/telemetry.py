"""Fleet overview, aggregates and ingest statistics."""

from __future__ import annotations

from collections import Counter

from flask import Blueprint, jsonify
from sqlalchemy import case, func
from sqlmodel import select

from fleet import ops_metrics
from fleet.api import responses as r
from fleet.api import schemas as sc
from fleet.api.validation import api, query
from fleet.app import fleet_context
from fleet.errors import page
from fleet.models import Aggregate, Device, DriftAlert, ModelVersion, now
from fleet.registry.auth import require_role


def overview_data(db) -> dict:  # type: ignore[no-untyped-def]
    """Fleet counts for the overview, computed in the database (COUNT/GROUP BY): at 10,000
    devices loading every row into Python cost most of the page's time (issue 18)."""
    t = now()
    active = Device.status == "active"
    total, n_active, seen = db.exec(select(
        func.count(), func.count(case((active, 1))),
        func.count(case((active & (Device.last_seen > t - 300) & (Device.last_seen != 0), 1))))
        .select_from(Device)).one()
    by_class: Counter[str] = Counter()
    for cls, n in db.exec(select(Device.device_class, func.count()).where(active).group_by(Device.device_class)):
        by_class[cls or "unknown"] += int(n)
    installed = db.exec(select(Device.installed_name, Device.installed_version, func.count())
                        .where(active, Device.installed_name.is_not(None), Device.installed_name != "")
                        .group_by(Device.installed_name, Device.installed_version)).all()
    return {
        "devices": {"total": int(total), "active": int(n_active), "decommissioned": int(total) - int(n_active),
                    "seen_last_5m": int(seen), "by_class": dict(sorted(by_class.items()))},
        "installed": [{"model": m, "version": v, "devices": int(n)}
                      for m, v, n in sorted(installed, key=lambda row: (row[0], row[1]))],
        "models": int(db.exec(select(func.count(func.distinct(ModelVersion.name)))).one()),
        "versions": int(db.exec(select(func.count()).select_from(ModelVersion)).one()),
        "open_alerts": int(db.exec(select(func.count()).select_from(DriftAlert)
                                   .where(DriftAlert.status == "open")).one()),
    }


bp = Blueprint("api_telemetry", __name__, url_prefix="/api")


@bp.get("/overview")
@require_role("viewer")
@api(responses={200: r.Overview})
def overview():  # type: ignore[no-untyped-def]
    with fleet_context().read_session() as db:
        return jsonify(overview_data(db))


@bp.get("/aggregates")
@require_role("viewer")
@api(query=sc.AggregatesQuery, responses={200: r.Page[r.AggregateView]})
def aggregates():  # type: ignore[no-untyped-def]
    """Aggregated telemetry windows, newest first; filter by model, version, cohort, role,
    device_class and since (unix time); `payload=true` adds the raw aggregate."""
    a = query()
    limit, offset = a.limit, a.offset
    q = select(Aggregate)
    for value, column in ((a.model, Aggregate.model_name), (a.cohort, Aggregate.cohort), (a.role, Aggregate.role),
                          (a.device_class, Aggregate.device_class)):
        if value:
            q = q.where(column == value)
    if a.version is not None:
        q = q.where(Aggregate.model_version == a.version)
    if a.since is not None:
        q = q.where(Aggregate.window_start >= a.since)
    with fleet_context().read_session() as db:
        total = db.exec(select(func.count()).select_from(q.subquery())).one()
        rows = db.exec(q.order_by(Aggregate.window_start.desc(), Aggregate.id).offset(offset).limit(limit))
        items = [{"model": g.model_name, "version": g.model_version, "role": g.role, "device_class": g.device_class,
                  "cohort": g.cohort, "window_start": g.window_start, "window_seconds": g.window_seconds,
                  "n_windows": g.n_windows, "requests": g.requests, "errors": g.errors,
                  "metrics": ops_metrics.summarise([g]),
                  "payload": g.payload if a.payload else None} for g in rows]
        return jsonify(page(items, int(total), limit, offset))


@bp.get("/ingest/stats")
@require_role("viewer")
@api(responses={200: r.IngestStats})
def ingest_stats():  # type: ignore[no-untyped-def]
    ing = fleet_context().ingest
    if ing is None:
        return jsonify({"running": False})
    return jsonify({"running": True, "mqtt5": ing.mqtt5, "topics": ing.topics(), **ing.stats.snapshot()})
