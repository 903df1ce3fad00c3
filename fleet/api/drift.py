"""Drift reports on demand, alert evaluation, listing and acknowledgement."""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from sqlalchemy import func
from sqlmodel import select

from fleet import alerts
from fleet.app import fleet_context
from fleet.auth import actor, require_role
from fleet.errors import ApiError, page, paginate_args
from fleet.models import DriftAlert

bp = Blueprint("api_drift", __name__, url_prefix="/api")


def _float(name: str) -> float | None:
    v = request.args.get(name)
    try:
        return None if v in (None, "") else float(v)
    except ValueError as exc:
        raise ApiError(400, "bad-request", f"{name} must be a number") from exc


@bp.get("/models/<name>/versions/<int:version>/drift")
@require_role("viewer")
def report(name: str, version: int):  # type: ignore[no-untyped-def]
    """?reference=baseline|control&cohort=&device_class=&role=&since=&until=&window_start="""
    ref = request.args.get("reference", "baseline")
    if ref not in ("baseline", "control"):
        raise ApiError(400, "bad-request", "reference must be baseline or control")
    ctx = fleet_context()
    with ctx.session() as db:
        try:
            rep = alerts.fleet_drift(db, ctx.settings, name, version, reference=ref,
                                     role=request.args.get("role", "active"), cohort=request.args.get("cohort"),
                                     device_class=request.args.get("device_class"), since=_float("since"),
                                     until=_float("until"), window_start=_float("window_start"))
        except alerts.NoReference as exc:
            raise ApiError(404, "no-reference", str(exc)) from exc
        return jsonify(rep.to_dict(with_counts=bool(request.args.get("counts"))))


@bp.post("/drift/evaluate")
@require_role("operator")
def evaluate():  # type: ignore[no-untyped-def]
    ctx = fleet_context()
    with ctx.session() as db:
        new = alerts.evaluate(db, ctx.settings, since=_float("since"), actor=actor())
        return jsonify({"new_alerts": [alerts.alert_view(a) for a in new]})


@bp.get("/alerts")
@require_role("viewer")
def list_alerts():  # type: ignore[no-untyped-def]
    limit, offset = paginate_args()
    q = select(DriftAlert)
    if request.args.get("status"):
        q = q.where(DriftAlert.status == request.args["status"])
    if request.args.get("model"):
        q = q.where(DriftAlert.model_name == request.args["model"])
    with fleet_context().session() as db:
        total = db.exec(select(func.count()).select_from(q.subquery())).one()
        rows = db.exec(q.order_by(DriftAlert.created_at.desc(), DriftAlert.id.desc()).offset(offset).limit(limit))
        return jsonify(page([alerts.alert_view(a) for a in rows], int(total), limit, offset))


@bp.get("/alerts/<int:alert_id>")
@require_role("viewer")
def show_alert(alert_id: int):  # type: ignore[no-untyped-def]
    with fleet_context().session() as db:
        a = db.get(DriftAlert, alert_id)
        if a is None:
            raise ApiError(404, "not-found", f"no alert {alert_id}")
        return jsonify(alerts.alert_view(a, with_evidence=True))


@bp.post("/alerts/<int:alert_id>/ack")
@require_role("operator")
def ack(alert_id: int):  # type: ignore[no-untyped-def]
    with fleet_context().session() as db:
        a = alerts.acknowledge(db, alert_id, actor())
        if a is None:
            raise ApiError(404, "not-found", f"no alert {alert_id}")
        return jsonify(alerts.alert_view(a))
