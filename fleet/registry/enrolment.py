"""Registry and enrolment: one-time tokens, device identity, MQTT credentials, decommissioning."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, select

from agent.keys import key_id, public_key_from_b64, public_key_to_b64
from agent.names import NAME_PATTERN, is_valid_name
from fleet import audit
from fleet.models import Device, EnrolmentToken, now
from fleet.registry.auth import hash_token, new_token
from fleet.settings import FleetSettings


class EnrolmentError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def create_enrolment_token(db: Session, actor: str, *, ttl_s: float = 24 * 3600, device_class: str | None = None,
                           tags: list[str] | None = None, attributes: dict[str, Any] | None = None
                           ) -> tuple[str, EnrolmentToken]:
    """A one-time token; presets (class, tags, attributes) apply to the device that uses it."""
    token = new_token("enr")
    row = EnrolmentToken(token_hash=hash_token(token), created_by=actor, expires_at=now() + ttl_s,
                         device_class=device_class, tags=list(tags or []), attributes=dict(attributes or {}))
    db.add(row)
    db.flush()
    audit.record(db, actor, "enrolment-token.create", f"enrolment-token:{row.id}", None,
                 {"expires_at": row.expires_at, "device_class": device_class, "tags": row.tags,
                  "attributes": row.attributes})
    return token, row


@dataclass
class Enrolled:
    device: Device
    mqtt_password: str


def enrol(db: Session, settings: FleetSettings, token: str, public_key_b64: str, *, device_id: str | None = None,
          device_class: str | None = None, tags: list[str] | None = None,
          attributes: dict[str, Any] | None = None) -> Enrolled:
    """Consume the token (atomically: two concurrent uses cannot both win) and register the device."""
    try:
        pub = public_key_from_b64(public_key_b64)
    except (ValueError, TypeError) as exc:
        raise EnrolmentError(400, "bad-public-key", "public_key must be a base64 raw Ed25519 key") from exc
    if device_id is not None and not is_valid_name(device_id):  # the agent's one name grammar
        raise EnrolmentError(400, "bad-device-id", f"device_id must match {NAME_PATTERN} (no '..')")
    th = hash_token(token)
    row = db.exec(select(EnrolmentToken).where(EnrolmentToken.token_hash == th)).first()
    if row is None or row.used_at is not None or row.expires_at < now():
        raise EnrolmentError(403, "invalid-token", "enrolment token is unknown, used or expired")
    device_id = device_id or f"dev-{secrets.token_hex(6)}"
    if db.get(Device, device_id) is not None:
        raise EnrolmentError(409, "device-exists", f"device {device_id!r} is already registered")
    claimed = db.execute(update(EnrolmentToken).where(EnrolmentToken.id == row.id, EnrolmentToken.used_at.is_(None))
                         .values(used_at=now(), device_id=device_id))
    if claimed.rowcount != 1:
        raise EnrolmentError(403, "invalid-token", "enrolment token is unknown, used or expired")
    password = secrets.token_urlsafe(24)
    device = Device(id=device_id, fleet=settings.fleet_id, device_class=device_class or row.device_class or "",
                    tags=sorted(set((row.tags or []) + list(tags or []))),
                    attributes={**(row.attributes or {}), **(attributes or {})},
                    public_key=public_key_to_b64(pub), key_id=key_id(pub), mqtt_username=device_id,
                    mqtt_password_hash=hash_token(password))
    db.add(device)
    audit.record(db, f"enrolment-token:{row.id}", "device.enrol", f"device:{device_id}", None, device_view(device))
    return Enrolled(device, password)


def decommission(db: Session, device_id: str, actor: str) -> Device:
    """Revoke the identity: ingest then drops its messages as unknown-device."""
    device = db.get(Device, device_id)
    if device is None:
        raise EnrolmentError(404, "not-found", f"no device {device_id!r}")
    before = device_view(device)
    device.status = "decommissioned"
    device.decommissioned_at = now()
    device.mqtt_password_hash = ""
    db.add(device)
    audit.record(db, actor, "device.decommission", f"device:{device_id}", before, device_view(device))
    return device


def update_device(db: Session, device_id: str, actor: str, *, tags: list[str] | None = None,
                  attributes: dict[str, Any] | None = None) -> Device:
    device = db.get(Device, device_id)
    if device is None:
        raise EnrolmentError(404, "not-found", f"no device {device_id!r}")
    before = device_view(device)
    if tags is not None:
        device.tags = sorted({str(t) for t in tags})
    if attributes is not None:
        device.attributes = {str(k): v for k, v in attributes.items()}
    db.add(device)
    audit.record(db, actor, "device.update", f"device:{device_id}", before, device_view(device))
    return device


def device_view(d: Device) -> dict[str, Any]:
    """The public JSON view of a device (no credentials)."""
    return {"id": d.id, "fleet": d.fleet, "device_class": d.device_class, "tags": d.tags or [],
            "attributes": d.attributes or {}, "status": d.status, "key_id": d.key_id, "public_key": d.public_key,
            "enrolled_at": d.enrolled_at, "decommissioned_at": d.decommissioned_at, "last_seen": d.last_seen,
            "online": d.online,
            "installed": None if d.installed_name is None else {
                "name": d.installed_name, "version": d.installed_version,
                "manifest_sha256": d.installed_manifest_sha256, "bundle_sha256": d.installed_bundle_sha256},
            "previous_version": d.previous_version, "agent_version": d.agent_version, "state_seq": d.state_seq,
            "command_seq": d.command_seq,
            "quarantine": None if d.quarantined_at is None else {"at": d.quarantined_at, "reason": d.quarantine_reason}}
