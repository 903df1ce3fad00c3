"""Fleet overview, aggregates and ingest statistics."""

from __future__ import annotations

from collections import Counter

from flask import Blueprint, jsonify, request
from sqlalchemy import func
from sqlmodel import select

from fleet import ops_metrics
from fleet.app import fleet_context
from fleet.auth import require_role
from fleet.errors import ApiError, page, paginate_args
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
def overview():  # type: ignore[no-untyped-def]
    with fleet_context().session() as db:
        return jsonify(overview_data(db))


@bp.get("/aggregates")
@require_role("viewer")
def aggregates():  # type: ignore[no-untyped-def]
    limit, offset = paginate_args()
    q = select(Aggregate)
    for arg, column in (("model", Aggregate.model_name), ("cohort", Aggregate.cohort), ("role", Aggregate.role),
                        ("device_class", Aggregate.device_class)):
        if request.args.get(arg):
            q = q.where(column == request.args[arg])
    try:
        if request.args.get("version"):
            q = q.where(Aggregate.model_version == int(request.args["version"]))
        if request.args.get("since"):
            q = q.where(Aggregate.window_start >= float(request.args["since"]))
    except ValueError as exc:
        raise ApiError(400, "bad-request", "version and since must be numbers") from exc
    with fleet_context().session() as db:
        total = db.exec(select(func.count()).select_from(q.subquery())).one()
        rows = db.exec(q.order_by(Aggregate.window_start.desc(), Aggregate.id).offset(offset).limit(limit))
        items = [{"model": a.model_name, "version": a.model_version, "role": a.role, "device_class": a.device_class,
                  "cohort": a.cohort, "window_start": a.window_start, "window_seconds": a.window_seconds,
                  "n_windows": a.n_windows, "requests": a.requests, "errors": a.errors,
                  "metrics": ops_metrics.summarise([a]),
                  "payload": a.payload if request.args.get("payload") else None} for a in rows]
        return jsonify(page(items, int(total), limit, offset))


@bp.get("/ingest/stats")
@require_role("viewer")
def ingest_stats():  # type: ignore[no-untyped-def]
    ing = fleet_context().ingest
    if ing is None:
        return jsonify({"running": False})
    return jsonify({"running": True, "mqtt5": ing.mqtt5, "topics": ing.topics(), **ing.stats.snapshot()})
