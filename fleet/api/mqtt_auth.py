"""The broker's HTTP auth hook: POST /api/mqtt/auth and /api/mqtt/acl (form or JSON fields as
mosquitto-go-auth's HTTP backend and EMQX's HTTP authenticator send them). 200 allows, 403 denies.

Keep these routes on the private network between broker and fleet (they carry passwords)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from fleet import mqtt_access
from fleet.app import fleet_context

bp = Blueprint("api_mqtt_auth", __name__, url_prefix="/api/mqtt")


def _fields() -> dict[str, Any]:
    body = request.get_json(silent=True)
    return dict(body) if isinstance(body, dict) else request.form.to_dict()


def _verdict(ok: bool) -> Any:
    return jsonify({"result": "allow" if ok else "deny", "Ok": ok}), 200 if ok else 403


@bp.post("/auth")
def auth():  # type: ignore[no-untyped-def]
    f = _fields()
    ctx = fleet_context()
    with ctx.session() as db:
        client = mqtt_access.authenticate(db, str(f.get("username", "")), str(f.get("password", "")),
                                          ctx.bootstrap_token_hashes)
    return _verdict(client is not None)


@bp.post("/acl")
def acl():  # type: ignore[no-untyped-def]
    f = _fields()
    try:
        acc = int(f.get("acc", 0))
    except (TypeError, ValueError):
        acc = 0
    if not acc and f.get("action"):  # EMQX: action = publish | subscribe
        acc = mqtt_access.WRITE if f["action"] == "publish" else mqtt_access.SUBSCRIBE
    with fleet_context().session() as db:
        ok = mqtt_access.authorize(db, str(f.get("username", "")), str(f.get("topic", "")), acc)
    return _verdict(ok)
