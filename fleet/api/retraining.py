"""Retraining requests: list them (viewer), approve or dismiss them (operator)."""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from sqlmodel import select

from fleet import retraining
from fleet.app import fleet_context
from fleet.auth import actor, require_role
from fleet.errors import ApiError
from fleet.models import RetrainingRequest

bp = Blueprint("api_retraining", __name__, url_prefix="/api/retraining")


@bp.get("")
@require_role("viewer")
def list_requests():  # type: ignore[no-untyped-def]
    status = request.args.get("status")
    with fleet_context().session() as db:
        q = select(RetrainingRequest).order_by(RetrainingRequest.id.desc())  # type: ignore[union-attr]
        if status:
            q = q.where(RetrainingRequest.status == status)
        return jsonify({"requests": [retraining.request_view(r) for r in db.exec(q.limit(200))]})


def decide_from_request(request_id: int, approve: bool) -> dict:  # type: ignore[type-arg]
    body = request.get_json(silent=True) or {}
    note = request.form.get("note", "") or (body.get("note", "") if isinstance(body, dict) else "")
    ctx = fleet_context()
    try:
        with ctx.session() as db:
            return retraining.request_view(retraining.decide(db, ctx.settings, request_id, actor(),
                                                             approve=approve, note=str(note)[:2000]))
    except retraining.RetrainingError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from exc


@bp.post("/<int:request_id>/approve")
@require_role("operator")
def approve(request_id: int):  # type: ignore[no-untyped-def]
    return jsonify(decide_from_request(request_id, True))


@bp.post("/<int:request_id>/dismiss")
@require_role("operator")
def dismiss(request_id: int):  # type: ignore[no-untyped-def]
    return jsonify(decide_from_request(request_id, False))
