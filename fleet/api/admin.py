"""API tokens (admin) and the audit log."""

from __future__ import annotations

from flask import Blueprint, jsonify
from sqlalchemy import func
from sqlmodel import select

from fleet import audit
from fleet.api import responses as r
from fleet.api import schemas as sc
from fleet.api.validation import api, body, query
from fleet.app import fleet_context
from fleet.errors import ApiError, page
from fleet.models import ApiToken, AuditEntry, now
from fleet.registry.auth import actor, create_api_token, require_role

bp = Blueprint("api_admin", __name__, url_prefix="/api")


def token_view(t: ApiToken) -> dict:  # type: ignore[type-arg]
    return {"id": t.id, "name": t.name, "role": t.role, "created_at": t.created_at, "created_by": t.created_by,
            "revoked_at": t.revoked_at}


@bp.post("/tokens")
@require_role("admin")
@api(body=sc.TokenCreate, responses={201: r.TokenCreated})
def create():  # type: ignore[no-untyped-def]
    """Create an API token; the token is shown once."""
    b = body()
    with fleet_context().session() as db:
        token, row = create_api_token(db, b.name, b.role, actor())
        return jsonify({"token": token, **token_view(row)}), 201


@bp.get("/tokens")
@require_role("admin")
@api(responses={200: r.Items[r.TokenView]})
def index():  # type: ignore[no-untyped-def]
    with fleet_context().session() as db:
        return jsonify({"items": [token_view(t) for t in db.exec(select(ApiToken).order_by(ApiToken.id))]})


@bp.delete("/tokens/<int:token_id>")
@require_role("admin")
@api(responses={200: r.TokenView})
def revoke(token_id: int):  # type: ignore[no-untyped-def]
    with fleet_context().session() as db:
        t = db.get(ApiToken, token_id)
        if t is None:
            raise ApiError(404, "not-found", f"no token {token_id}")
        before = token_view(t)
        t.revoked_at = t.revoked_at or now()
        db.add(t)
        audit.record(db, actor(), "token.revoke", f"token:{token_id}", before, token_view(t))
        return jsonify(token_view(t))


def audit_view(e: AuditEntry) -> dict:  # type: ignore[type-arg]
    return {"id": e.id, "at": e.at, "actor": e.actor, "action": e.action, "target": e.target,
            "before": e.before, "after": e.after}


@bp.get("/audit")
@require_role("operator")
@api(query=sc.AuditQuery, responses={200: r.Page[r.AuditView]})
def audit_log():  # type: ignore[no-untyped-def]
    """The audit log, newest first; filter by actor, action and target (exact match)."""
    a = query()
    limit, offset = a.limit, a.offset
    q = select(AuditEntry)
    for value, column in ((a.actor, AuditEntry.actor), (a.action, AuditEntry.action), (a.target, AuditEntry.target)):
        if value:
            q = q.where(column == value)
    with fleet_context().session() as db:
        total = db.exec(select(func.count()).select_from(q.subquery())).one()
        rows = db.exec(q.order_by(AuditEntry.id.desc()).offset(offset).limit(limit))
        return jsonify(page([audit_view(e) for e in rows], int(total), limit, offset))
