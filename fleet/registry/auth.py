"""API tokens with roles (viewer < operator < admin). Only SHA-256 hashes of tokens are stored.

A request authenticates with `Authorization: Bearer <token>` (REST) or with the console's signed
session cookie (which holds the token hash, never the token).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import g, redirect, request, session, url_for
from sqlmodel import Session, select

from fleet.errors import ApiError
from fleet.models import ApiToken, now

ROLES = ("viewer", "operator", "admin")


@dataclass(frozen=True)
class Principal:
    name: str
    role: str

    def allows(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(prefix: str = "eft") -> str:
    return f"{prefix}_{secrets.token_urlsafe(24)}"


def create_api_token(db: Session, name: str, role: str, actor: str) -> tuple[str, ApiToken]:
    """Create a token; the plaintext is returned once and never stored."""
    from fleet import audit

    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    token = new_token()
    row = ApiToken(name=name, role=role, token_hash=hash_token(token), created_by=actor)
    db.add(row)
    db.flush()
    audit.record(db, actor, "token.create", f"token:{row.id}", None, {"name": name, "role": role})
    return token, row


def principal_for_hash(db: Session, token_hash: str, bootstrap: dict[str, str]) -> Principal | None:
    """Bootstrap tokens (settings, by hash) first, then the database."""
    for h, role in bootstrap.items():
        if hmac.compare_digest(h, token_hash):
            return Principal(f"bootstrap-{role}", role)
    row = db.exec(select(ApiToken).where(ApiToken.token_hash == token_hash)).first()
    if row is None or row.revoked_at is not None:
        return None
    return Principal(row.name, row.role)


def current_principal() -> Principal | None:
    """Who is calling (cached on flask.g); None when not authenticated."""
    if "principal" in g:
        return g.principal
    from fleet.app import fleet_context

    ctx = fleet_context()
    header = request.headers.get("Authorization", "")
    token_hash = None
    if header.lower().startswith("bearer "):
        token_hash = hash_token(header[7:].strip())
    elif session.get("token_hash"):
        token_hash = session["token_hash"]
    principal = None
    if token_hash:
        with ctx.session() as db:
            principal = principal_for_hash(db, token_hash, ctx.bootstrap_token_hashes)
    g.principal = principal
    return principal


def require_role(role: str, *, html: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: 401 without valid credentials, 403 when the role is too low.

    html=True (console pages) redirects to the login page instead of a JSON 401.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            p = current_principal()
            if p is None:
                if html:
                    return redirect(url_for("console.login", next=request.full_path))
                raise ApiError(401, "unauthorized", "a valid API token is required (Authorization: Bearer ...)")
            if not p.allows(role):
                raise ApiError(403, "forbidden", f"role {p.role!r} may not do this; {role!r} needed")
            return fn(*args, **kwargs)

        wrapper.required_role = role  # type: ignore[attr-defined]
        return wrapper

    return deco


def actor() -> str:
    p = current_principal()
    return p.name if p else "anonymous"


def touch(db: Session, token_hash: str) -> None:
    row = db.exec(select(ApiToken).where(ApiToken.token_hash == token_hash)).first()
    if row:
        row.last_used = now()
