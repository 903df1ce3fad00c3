"""The console's pages (all server-rendered; forms POST back for the few actions)."""

from __future__ import annotations

import time
from collections import defaultdict

from flask import abort, redirect, render_template, request, url_for
from sqlmodel import select

from fleet.api.devices import list_devices
from fleet.api.telemetry import overview_data
from fleet.api.validation import offset_arg
from fleet.app import fleet_context
from fleet.catalogue import versions as catalogue
from fleet.console import charts, device_view, drift_view, model_view, status
from fleet.console.views import bp
from fleet.drift import alerts
from fleet.drift.engine import DriftParams
from fleet.models import (
    Aggregate,
    AuditEntry,
    Device,
    DeviceEvent,
    DriftAlert,
    ModelVersion,
    RetrainingRequest,
)
from fleet.registry import enrolment
from fleet.registry.auth import actor, current_principal, require_role

PAGE = 50


@bp.app_template_filter("ts")
def _ts(v: float | None) -> str:
    return "—" if not v else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v))


@bp.app_template_filter("ago")
def _ago(v: float | None) -> str:
    if not v:
        return "never"
    d = max(0, time.time() - v)
    for unit, s in (("d", 86400), ("h", 3600), ("m", 60)):
        if d >= s:
            return f"{int(d // s)}{unit} ago"
    return f"{int(d)}s ago"


@bp.context_processor
def _ctx() -> dict:
    return {"principal": current_principal(), "charts": charts, "nav": request.endpoint}


@bp.get("/")
@require_role("viewer", html=True)
def overview():  # type: ignore[no-untyped-def]
    with fleet_context().read_session() as db:
        data = overview_data(db)
        recent_alerts = list(db.exec(select(DriftAlert).order_by(DriftAlert.id.desc()).limit(5)))
        recent_audit = list(db.exec(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(8)))
        parts = [(f"{i['model']} v{i['version']}", i["devices"]) for i in data["installed"]]
        return render_template("console/overview.html", data=data, alerts=recent_alerts, audit=recent_audit,
                               installed_parts=parts,
                               wrong=status.whats_wrong(db, review_days=fleet_context().settings.lifecycle.review_interval_days))


@bp.get("/devices")
@require_role("viewer", html=True)
def devices():  # type: ignore[no-untyped-def]
    offset = offset_arg()
    with fleet_context().read_session() as db:
        rows, total = list_devices(db, request.args, PAGE, offset)
        classes = sorted({c for c in db.exec(select(Device.device_class).distinct()) if c})
        return render_template("console/devices.html", devices=rows, total=total, offset=offset, page=PAGE,
                               classes=classes, args=request.args)


@bp.get("/devices/<device_id>")
@require_role("viewer", html=True)
def device(device_id: str):  # type: ignore[no-untyped-def]
    with fleet_context().session() as db:
        d = db.get(Device, device_id)
        if d is None:
            abort(404)
        events = list(db.exec(select(DeviceEvent).where(DeviceEvent.device_id == device_id)
                              .order_by(DeviceEvent.seq.desc()).limit(20)))
        return render_template("console/device.html", d=d, view=enrolment.device_view(d), events=events,
                               changes=device_view.changes(db, device_id),
                               labels=device_view.event_labels(db, events),
                               alerts=device_view.device_alerts(db, d, fleet_context().settings.cohort_keys))


@bp.post("/devices/<device_id>/decommission")
@require_role("operator", html=True)
def device_decommission(device_id: str):  # type: ignore[no-untyped-def]
    ctx = fleet_context()
    with ctx.session() as db:
        enrolment.decommission(db, device_id, actor())
    ctx.device_changed(device_id)
    return redirect(url_for("console.device", device_id=device_id))


@bp.get("/models")
@require_role("viewer", html=True)
def models():  # type: ignore[no-untyped-def]
    with fleet_context().session() as db:
        by_name: dict[str, list[ModelVersion]] = defaultdict(list)
        for mv in db.exec(select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version.desc())):
            by_name[mv.name].append(mv)
        return render_template("console/models.html", models=dict(by_name))


@bp.get("/models/<name>")
@require_role("viewer", html=True)
def model(name: str):  # type: ignore[no-untyped-def]
    ctx = fleet_context()
    with ctx.session() as db:
        versions = list(db.exec(select(ModelVersion).where(ModelVersion.name == name)
                                .order_by(ModelVersion.version.desc())))
        if not versions:
            abort(404)
        cols = model_view.compare(db, name, versions)
        perf = {(c["version"], cls): p for c in cols for cls, p in c["perf"].items()}
        views = [catalogue.version_view(mv) for mv in versions]
        from fleet.catalogue.explain_view import importance_table

        return render_template("console/model.html", name=name, versions=views, perf=perf, cols=cols,
                               human_bytes=model_view.human_bytes, importance=importance_table(views))


@bp.get("/models/<name>/<int:version>/drift")
@require_role("viewer", html=True)
def drift(name: str, version: int):  # type: ignore[no-untyped-def]
    ctx = fleet_context()
    ref = request.args.get("reference", "baseline")
    cohort = request.args.get("cohort") or None
    with ctx.read_session() as db:
        cohorts = sorted({c for c in db.exec(select(Aggregate.cohort).where(
            Aggregate.model_name == name, Aggregate.model_version == version).distinct())})
        # a rolled-out version is judged with its rollout's gate settings (?settings=fleet: the fleet's)
        rollout = drift_view.for_version(db, name, version, request.args.get("rollout", type=int))
        params = rollout.params if rollout is not None and request.args.get("settings") != "fleet" else None
        try:
            rep = alerts.fleet_drift(db, params or ctx.settings, name, version, reference=ref, cohort=cohort)
            report, error = rep.to_dict(), None
        except alerts.NoReference as exc:
            report, error = None, str(exc)
        return render_template("console/drift.html", name=name, version=version, report=report, error=error,
                               reference=ref, cohort=cohort, cohorts=cohorts, rollout=rollout,
                               ds=params or DriftParams.of(ctx.settings))


@bp.get("/alerts")
@require_role("viewer", html=True)
def alert_list():  # type: ignore[no-untyped-def]
    status = request.args.get("status") or None
    with fleet_context().session() as db:
        q = select(DriftAlert)
        if status:
            q = q.where(DriftAlert.status == status)
        rows = list(db.exec(q.order_by(DriftAlert.id.desc()).limit(200)))
        requests_ = list(db.exec(select(RetrainingRequest).order_by(RetrainingRequest.id.desc()).limit(20)))
        return render_template("console/alerts.html", alerts=rows, status=status, retraining=requests_)


@bp.post("/retraining/<int:request_id>/<op>")
@require_role("operator", html=True)
def retraining_decide(request_id: int, op: str):  # type: ignore[no-untyped-def]
    from fleet.api.retraining import decide_from_request

    if op not in ("approve", "dismiss"):
        return redirect(url_for("console.alert_list"))
    decide_from_request(request_id, op == "approve")
    return redirect(url_for("console.alert_list"))


@bp.post("/alerts/<int:alert_id>/ack")
@require_role("operator", html=True)
def alert_ack(alert_id: int):  # type: ignore[no-untyped-def]
    with fleet_context().session() as db:
        alerts.acknowledge(db, alert_id, actor())
    return redirect(url_for("console.alert_list"))
