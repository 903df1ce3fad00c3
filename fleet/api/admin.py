"""API tokens (admin) and the audit log."""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from sqlalchemy import func
from sqlmodel import select

from fleet import audit
from fleet.app import fleet_context
from fleet.auth import ROLES, actor, create_api_token, require_role
from fleet.errors import ApiError, json_body, page, paginate_args
from fleet.models import ApiToken, AuditEntry, now

bp = Blueprint("api_admin", __name__, url_prefix="/api")


def token_view(t: ApiToken) -> dict:  # type: ignore[type-arg]
    return {"id": t.id, "name": t.name, "role": t.role, "created_at": t.created_at, "created_by": t.created_by,
            "revoked_at": t.revoked_at}


@bp.post("/tokens")
@require_role("admin")
def create():  # type: ignore[no-untyped-def]
    body = json_body()
    if body.get("role") not in ROLES or not isinstance(body.get("name"), str) or not body["name"]:
        raise ApiError(400, "bad-request", f"name and role ({', '.join(ROLES)}) are required")
    with fleet_context().session() as db:
        token, row = create_api_token(db, body["name"], body["role"], actor())
        return jsonify({"token": token, **token_view(row)}), 201


@bp.get("/tokens")
@require_role("admin")
def index():  # type: ignore[no-untyped-def]
    with fleet_context().session() as db:
        return jsonify({"items": [token_view(t) for t in db.exec(select(ApiToken).order_by(ApiToken.id))]})


@bp.delete("/tokens/<int:token_id>")
@require_role("admin")
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
def audit_log():  # type: ignore[no-untyped-def]
    limit, offset = paginate_args()
    q = select(AuditEntry)
    for arg, column in (("actor", AuditEntry.actor), ("action", AuditEntry.action),
                        ("target", AuditEntry.target)):
        if request.args.get(arg):
            q = q.where(column == request.args[arg])
    with fleet_context().session() as db:
        total = db.exec(select(func.count()).select_from(q.subquery())).one()
        rows = db.exec(q.order_by(AuditEntry.id.desc()).offset(offset).limit(limit))
        return jsonify(page([audit_view(e) for e in rows], int(total), limit, offset))
