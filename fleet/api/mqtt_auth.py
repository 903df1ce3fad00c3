"""The broker's HTTP auth hook: POST /api/mqtt/auth and /api/mqtt/acl (form or JSON fields as
mosquitto-go-auth's HTTP backend and EMQX's HTTP authenticator send them). 200 allows, 403 denies.

Keep these routes on the private network between broker and fleet (they carry passwords)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from fleet.api import responses as r
from fleet.api import schemas as sc
from fleet.api.validation import api, body
from fleet.app import fleet_context
from fleet.registry import mqtt_access

bp = Blueprint("api_mqtt_auth", __name__, url_prefix="/api/mqtt")


def _verdict(ok: bool) -> Any:
    return jsonify({"result": "allow" if ok else "deny", "Ok": ok}), 200 if ok else 403


_VERDICTS = {200: r.MqttVerdict, 403: r.MqttVerdict}


@bp.post("/auth")
@api(body=sc.MqttAuthRequest, form=True, responses=_VERDICTS)
def auth():  # type: ignore[no-untyped-def]
    """Broker hook: may this username/password connect? 200 allows, 403 denies."""
    f = body()
    ctx = fleet_context()
    with ctx.session() as db:
        client = mqtt_access.authenticate(db, f.username, f.password, ctx.bootstrap_token_hashes)
    return _verdict(client is not None)


@bp.post("/acl")
@api(body=sc.MqttAuthRequest, form=True, responses=_VERDICTS)
def acl():  # type: ignore[no-untyped-def]
    """Broker hook: may this client publish/subscribe to this topic? 200 allows, 403 denies."""
    f = body()
    acc = f.acc
    if not acc and f.action:  # EMQX: action = publish | subscribe
        acc = mqtt_access.WRITE if f.action == "publish" else mqtt_access.SUBSCRIBE
    with fleet_context().session() as db:
        ok = mqtt_access.authorize(db, f.username, f.topic, acc)
    return _verdict(ok)
