"""Enrolment: operators create one-time tokens; devices trade one (plus their public key) for an identity."""

from __future__ import annotations

from flask import Blueprint, jsonify

from fleet.api import responses as r
from fleet.api import schemas as sc
from fleet.api.validation import api, body
from fleet.app import fleet_context
from fleet.errors import ApiError
from fleet.ingest.broker import DEFAULT_URL
from fleet.registry import enrolment
from fleet.registry.auth import actor, require_role
from fleet.registry.fleet_keys import device_trust

bp = Blueprint("api_enrol", __name__, url_prefix="/api")


def _host_port(url: str) -> tuple[str, int]:
    """Devices may be told an mqtts:// URL (TLS listener) that the fleet itself does not use."""
    from urllib.parse import urlparse

    u = urlparse(url)
    return u.hostname or "127.0.0.1", u.port or (8883 if u.scheme == "mqtts" else 1883)


@bp.post("/enrolment-tokens")
@require_role("operator")
@api(body=sc.EnrolmentTokenCreate, body_required=False, responses={201: r.EnrolmentTokenCreated})
def create_token():  # type: ignore[no-untyped-def]
    """A one-time enrolment token; its class, tags and attributes are preset on the device that uses it."""
    b = body()
    with fleet_context().session() as db:
        token, row = enrolment.create_enrolment_token(
            db, actor(), ttl_s=float(b.ttl_s), device_class=b.device_class, tags=b.tags, attributes=b.attributes)
        return jsonify({"token": token, "id": row.id, "expires_at": row.expires_at}), 201


@bp.post("/enrol")
@api(body=sc.EnrolRequest, responses={201: r.Enrolled})
def enrol():  # type: ignore[no-untyped-def]
    """Trade a one-time enrolment token and the device's public key for an identity.

    Public: the enrolment token is the credential."""
    b = body()
    ctx = fleet_context()
    s = ctx.settings
    try:
        with ctx.session() as db:
            res = enrolment.enrol(db, s, b.token, b.public_key, device_id=b.device_id,
                                  device_class=b.device_class, tags=b.tags, attributes=b.attributes)
            device = enrolment.device_view(res.device)
    except enrolment.EnrolmentError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from exc
    device_url = s.device_mqtt_url or s.mqtt_url or DEFAULT_URL
    host, port = _host_port(device_url)
    trust = device_trust(s)  # the signed key list (pins the root) and the keys by role
    base = f"edgefleet/v1/{s.fleet_id}/{device['id']}"
    return jsonify({
        "device_id": device["id"], "fleet": s.fleet_id, "device": device,
        "mqtt": {"host": host, "port": port, "url": device_url, "username": device["id"],
                 "password": res.mqtt_password, "client_id": device["id"]},
        "topics": {k: f"{base}/{k}" for k in ("telemetry", "state", "events", "cmd")},
        **trust, "artifacts_url": f"{s.public_url}/artifacts",
    }), 201
