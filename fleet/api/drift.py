"""Drift reports on demand, alert evaluation, listing and acknowledgement."""

from __future__ import annotations

from flask import Blueprint, jsonify
from sqlalchemy import func
from sqlmodel import select

from fleet.api import responses as r
from fleet.api import schemas as sc
from fleet.api.validation import api, query
from fleet.app import fleet_context
from fleet.drift import alerts
from fleet.errors import ApiError, page
from fleet.models import DriftAlert
from fleet.registry.auth import actor, require_role

bp = Blueprint("api_drift", __name__, url_prefix="/api")


@bp.get("/models/<name>/versions/<int:version>/drift")
@require_role("viewer")
@api(query=sc.DriftQuery, responses={200: r.JsonObject})
def report(name: str, version: int):  # type: ignore[no-untyped-def]
    """Drift of a version against its baseline or the control version (PSI / JS per feature).

    Filter by cohort, device_class, role and a time range (since/until, unix time) or one window."""
    a = query()
    ctx = fleet_context()
    with ctx.read_session() as db:
        try:
            rep = alerts.fleet_drift(db, ctx.settings, name, version, reference=a.reference, role=a.role,
                                     cohort=a.cohort, device_class=a.device_class, since=a.since, until=a.until,
                                     window_start=a.window_start)
        except alerts.NoReference as exc:
            raise ApiError(404, "no-reference", str(exc)) from exc
        return jsonify(rep.to_dict(with_counts=a.counts))


@bp.post("/drift/evaluate")
@require_role("operator")
@api(query=sc.SinceQuery, responses={200: r.NewAlerts})
def evaluate():  # type: ignore[no-untyped-def]
    """Evaluate drift now (windows since `since`) and raise alerts; returns the new ones."""
    ctx = fleet_context()
    with ctx.session() as db:
        new = alerts.evaluate(db, ctx.settings, since=query().since, actor=actor())
        return jsonify({"new_alerts": [alerts.alert_view(a) for a in new]})


@bp.get("/alerts")
@require_role("viewer")
@api(query=sc.AlertsQuery, responses={200: r.Page[r.AlertView]})
def list_alerts():  # type: ignore[no-untyped-def]
    """Drift alerts, newest first; filter by status (open, acknowledged) and model."""
    a = query()
    limit, offset = a.limit, a.offset
    q = select(DriftAlert)
    if a.status:
        q = q.where(DriftAlert.status == a.status)
    if a.model:
        q = q.where(DriftAlert.model_name == a.model)
    with fleet_context().session() as db:
        total = db.exec(select(func.count()).select_from(q.subquery())).one()
        rows = db.exec(q.order_by(DriftAlert.created_at.desc(), DriftAlert.id.desc()).offset(offset).limit(limit))
        return jsonify(page([alerts.alert_view(a) for a in rows], int(total), limit, offset))


@bp.get("/alerts/<int:alert_id>")
@require_role("viewer")
@api(responses={200: r.AlertView})
def show_alert(alert_id: int):  # type: ignore[no-untyped-def]
    with fleet_context().session() as db:
        a = db.get(DriftAlert, alert_id)
        if a is None:
            raise ApiError(404, "not-found", f"no alert {alert_id}")
        return jsonify(alerts.alert_view(a, with_evidence=True))


@bp.post("/alerts/<int:alert_id>/ack")
@require_role("operator")
@api(responses={200: r.AlertView})
def ack(alert_id: int):  # type: ignore[no-untyped-def]
    with fleet_context().session() as db:
        a = alerts.acknowledge(db, alert_id, actor())
        if a is None:
            raise ApiError(404, "not-found", f"no alert {alert_id}")
        return jsonify(alerts.alert_view(a))
