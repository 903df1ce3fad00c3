"""Retraining requests: list them (viewer), approve or dismiss them (operator)."""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from sqlmodel import select

from fleet.api import responses as r
from fleet.api import schemas as sc
from fleet.api.validation import api, body, query
from fleet.app import fleet_context
from fleet.drift import retraining
from fleet.errors import ApiError
from fleet.models import RetrainingRequest
from fleet.registry.auth import actor, require_role

bp = Blueprint("api_retraining", __name__, url_prefix="/api/retraining")


@bp.get("")
@require_role("viewer")
@api(query=sc.StatusQuery, responses={200: r.RetrainingList})
def list_requests():  # type: ignore[no-untyped-def]
    """The latest 200 retraining requests, newest first; `status` filters."""
    status = query().status
    with fleet_context().session() as db:
        q = select(RetrainingRequest).order_by(RetrainingRequest.id.desc())  # type: ignore[union-attr]
        if status:
            q = q.where(RetrainingRequest.status == status)
        return jsonify({"requests": [retraining.request_view(r) for r in db.exec(q.limit(200))]})


def decide_from_request(request_id: int, approve: bool) -> dict:  # type: ignore[type-arg]
    """The console's form post."""
    return decide(request_id, approve, request.form.get("note", ""))


def decide(request_id: int, approve: bool, note: str) -> dict:  # type: ignore[type-arg]
    ctx = fleet_context()
    try:
        with ctx.session() as db:
            return retraining.request_view(retraining.decide(db, ctx.settings, request_id, actor(),
                                                             approve=approve, note=str(note)[:2000]))
    except retraining.RetrainingError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from exc


@bp.post("/<int:request_id>/approve")
@require_role("operator")
@api(body=sc.DecisionBody, body_required=False, responses={200: r.RetrainingView})
def approve(request_id: int):  # type: ignore[no-untyped-def]
    """Approve a retraining request (fires the configured webhook)."""
    return jsonify(decide(request_id, True, body().note))


@bp.post("/<int:request_id>/dismiss")
@require_role("operator")
@api(body=sc.DecisionBody, body_required=False, responses={200: r.RetrainingView})
def dismiss(request_id: int):  # type: ignore[no-untyped-def]
    """Dismiss a retraining request."""
    return jsonify(decide(request_id, False, body().note))
