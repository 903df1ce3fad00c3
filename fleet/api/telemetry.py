"""Fleet overview, aggregates and ingest statistics."""

from __future__ import annotations

from collections import Counter

from flask import Blueprint, jsonify
from sqlalchemy import func
from sqlmodel import select

from fleet import ops_metrics
from fleet.api import responses as r
from fleet.api import schemas as sc
from fleet.api.validation import api, query
from fleet.app import fleet_context
from fleet.auth import require_role
from fleet.errors import page
from fleet.models import Aggregate, Device, DriftAlert, ModelVersion, now


def overview_data(db) -> dict:  # type: ignore[no-untyped-def]
    devices = list(db.exec(select(Device.status, Device.installed_name, Device.installed_version,
                                  Device.last_seen, Device.device_class)))
    t = now()
    active = [d for d in devices if d[0] == "active"]
    return {
        "devices": {"total": len(devices), "active": len(active),
                    "decommissioned": len(devices) - len(active),
                    "seen_last_5m": sum(1 for d in active if d[3] and t - d[3] < 300),
                    "by_class": dict(Counter(d[4] or "unknown" for d in active))},
        "installed": [{"model": m, "version": v, "devices": n} for (m, v), n in sorted(
            Counter((d[1], d[2]) for d in active if d[1]).items(), key=lambda kv: (kv[0][0], kv[0][1]))],
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
    with fleet_context().session() as db:
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
    with fleet_context().session() as db:
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
