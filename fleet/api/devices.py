"""Devices: list with filters, detail, tags/attributes, decommission, events and windows."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from sqlalchemy import func, or_, text
from sqlmodel import Session, col, select

from fleet.api import responses as r
from fleet.api import schemas as sc
from fleet.api.validation import api, body, query
from fleet.app import fleet_context
from fleet.errors import ApiError, page
from fleet.ingest import trust as ingest_trust
from fleet.models import Device, DeviceEvent, TelemetryWindow
from fleet.registry import enrolment
from fleet.registry.auth import actor, require_role

bp = Blueprint("api_devices", __name__, url_prefix="/api/devices")


def device_query(args: Any, dialect: str):  # type: ignore[no-untyped-def]
    """Filters shared by the API and the console, all in SQL: status, device_class, model,
    version, q (id contains), tag, and attribute filters attr.<key>=<value> (e.g. attr.region=eu)."""
    q = select(Device)
    if args.get("status"):
        q = q.where(Device.status == args["status"])
    if args.get("device_class"):
        q = q.where(Device.device_class == args["device_class"])
    if args.get("model"):
        q = q.where(Device.installed_name == args["model"])
    if args.get("version"):
        try:
            version = int(args["version"])
        except ValueError as exc:
            raise ApiError(400, "bad-request", "version must be an integer") from exc
        if not 0 <= version <= sc.INT32_MAX:
            raise ApiError(400, "bad-request", "version is out of range")
        q = q.where(Device.installed_version == version)
    if args.get("q"):
        q = q.where(col(Device.id).contains(args["q"], autoescape=True))
    for key, value in args.items():
        if key.startswith("attr.") and value:
            q = q.where(Device.attributes[key[5:]].as_string() == value)
    if args.get("tag"):
        if dialect == "postgresql":
            q = q.where(text("jsonb_exists(CAST(device.tags AS jsonb), :tag)").bindparams(tag=args["tag"]))
        else:
            q = q.where(text("EXISTS (SELECT 1 FROM json_each(device.tags) WHERE json_each.value = :tag)")
                        .bindparams(tag=args["tag"]))
    return q


def list_devices(db: Session, args: Any, limit: int, offset: int) -> tuple[list[Device], int]:
    q = device_query(args, db.get_bind().dialect.name).order_by(Device.id)
    total = db.exec(select(func.count()).select_from(q.subquery())).one()
    return list(db.exec(q.offset(offset).limit(limit))), int(total)


@bp.get("")
@require_role("viewer")
@api(query=sc.DeviceListQuery, responses={200: r.Page[r.DeviceView]})
def index():  # type: ignore[no-untyped-def]
    """Devices, filtered by status, device_class, model, version, q (id contains), tag and
    attr.<key>=<value> (e.g. attr.region=eu; several attr filters must all hold)."""
    a = query()
    limit, offset = a.limit, a.offset
    with fleet_context().read_session() as db:
        rows, total = list_devices(db, a.model_dump(exclude_none=True), limit, offset)
        return jsonify(page([enrolment.device_view(d) for d in rows], total, limit, offset))


def _get(db: Session, device_id: str) -> Device:
    d = db.get(Device, device_id)
    if d is None:
        raise ApiError(404, "not-found", f"no device {device_id!r}")
    return d


@bp.get("/<device_id>")
@require_role("viewer")
@api(responses={200: r.DeviceDetail})
def show(device_id: str):  # type: ignore[no-untyped-def]
    with fleet_context().session() as db:
        d = _get(db, device_id)
        return jsonify({**enrolment.device_view(d), "state": d.state})


@bp.patch("/<device_id>")
@require_role("operator")
@api(body=sc.DevicePatch, responses={200: r.DeviceView})
def patch(device_id: str):  # type: ignore[no-untyped-def]
    """Replace the device's tags and/or attributes (a field left out is kept)."""
    tags, attrs = body().tags, body().attributes
    return _change_device(device_id, lambda db: enrolment.update_device(db, device_id, actor(), tags=tags,
                                                                        attributes=attrs))


@bp.post("/<device_id>/decommission")
@require_role("operator")
@api(responses={200: r.DeviceView})
def decommission(device_id: str):  # type: ignore[no-untyped-def]
    return _change_device(device_id, lambda db: enrolment.decommission(db, device_id, actor()))


@bp.post("/<device_id>/release")
@require_role("operator")
@api(responses={200: r.DeviceView})
def release(device_id: str):  # type: ignore[no-untyped-def]
    """Clear an ingest quarantine (a failed sampled signature check): its telemetry is accepted again."""
    return _change_device(device_id, lambda db: ingest_trust.release(db, device_id, actor()))


def _change_device(device_id: str, change: Any) -> Any:
    """Apply `change(db) -> Device` in one transaction, then make every ingest cache forget it."""
    ctx = fleet_context()
    try:
        with ctx.session() as db:
            view = enrolment.device_view(change(db))
    except enrolment.EnrolmentError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from exc
    ctx.device_changed(device_id)
    return jsonify(view)


@bp.get("/<device_id>/events")
@require_role("viewer")
@api(query=sc.PageQuery, responses={200: r.Page[r.DeviceEventView]})
def events(device_id: str):  # type: ignore[no-untyped-def]
    """The device's events (installs, rollbacks, errors), newest first."""
    limit, offset = query().limit, query().offset
    with fleet_context().read_session() as db:
        _get(db, device_id)
        base = select(DeviceEvent).where(DeviceEvent.device_id == device_id)
        total = db.exec(select(func.count()).select_from(base.subquery())).one()
        rows = db.exec(base.order_by(DeviceEvent.seq.desc()).offset(offset).limit(limit))
        items = [{"seq": e.seq, "time": e.time, "kind": e.kind, "command_id": e.command_id, "reason": e.reason,
                  "details": e.details} for e in rows]
        return jsonify(page(items, int(total), limit, offset))


@bp.get("/<device_id>/telemetry")
@require_role("viewer")
@api(query=sc.TelemetryQuery, responses={200: r.Page[r.TelemetryView]})
def telemetry(device_id: str):  # type: ignore[no-untyped-def]
    """The device's telemetry windows, newest first; `model` filters, `payload=true` adds the raw window."""
    a = query()
    limit, offset = a.limit, a.offset
    with fleet_context().read_session() as db:
        _get(db, device_id)
        base = select(TelemetryWindow).where(TelemetryWindow.device_id == device_id)
        if a.model:
            base = base.where(or_(TelemetryWindow.model_name == a.model))
        total = db.exec(select(func.count()).select_from(base.subquery())).one()
        rows = db.exec(base.order_by(TelemetryWindow.seq.desc()).offset(offset).limit(limit))
        items = [{"seq": w.seq, "window_start": w.window_start, "window_end": w.window_end, "model": w.model_name,
                  "version": w.model_version, "role": w.role, "requests": w.requests, "errors": w.errors,
                  "cohort": w.cohort, "payload": w.payload if a.payload else None}
                 for w in rows]
        return jsonify(page(items, int(total), limit, offset))
