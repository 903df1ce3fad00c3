"""Who may connect to the broker and what each may touch: the decisions behind the broker's HTTP
auth hook (mosquitto-go-auth's HTTP backend, EMQX's HTTP authenticator and authorizer).

A device logs in with the username and password it got at enrolment and may only publish its own
telemetry, state and events, read its own command topic and read its fleet's ingest status
(`edgefleet/ingest/<fleet>/+/status`, retained, for `mqtt.hold_until_ingest`). The fleet's own processes log in with
an operator or admin API token as the password. Decommissioned devices are refused.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from sqlmodel import Session, select

from agent.protocol import INGEST_ROOT
from fleet.models import Device
from fleet.registry.auth import hash_token, principal_for_hash

DEVICE_PUBLISH = ("telemetry", "state", "events")
DEVICE_READ = ("cmd",)
# mosquitto-go-auth's `acc`: 1 read, 2 write, 3 read+write, 4 subscribe.
READ, WRITE, READWRITE, SUBSCRIBE = 1, 2, 3, 4


@dataclass(frozen=True)
class BrokerClient:
    username: str
    kind: str  # "device" | "service"
    fleet: str = ""


def authenticate(db: Session, username: str, password: str, bootstrap: dict[str, str]) -> BrokerClient | None:
    if not username or not password:
        return None
    dev = db.exec(select(Device).where(Device.mqtt_username == username)).first()
    if dev is not None:
        ok = dev.status == "active" and bool(dev.mqtt_password_hash) and hmac.compare_digest(
            dev.mqtt_password_hash, hash_token(password))
        return BrokerClient(username, "device", dev.fleet) if ok else None
    p = principal_for_hash(db, hash_token(password), bootstrap)
    return BrokerClient(username, "service") if p is not None and p.allows("operator") else None


def authorize(db: Session, username: str, topic: str, acc: int) -> bool:
    """Services may use any topic; a device only its own, in the direction it needs."""
    dev = db.exec(select(Device).where(Device.mqtt_username == username)).first()
    if dev is None:
        # Brokers only ask for ACLs of clients that `authenticate` accepted: a service account.
        return bool(username)
    if dev.status != "active":
        return False
    parts = topic.split("/")
    if acc in (READ, SUBSCRIBE) and len(parts) == 5 and "/".join(parts[:3]) == f"{INGEST_ROOT}/{dev.fleet}" \
            and parts[4] == "status" and (parts[3] == "+" or (parts[3] != "" and not set(parts[3]) & {"+", "#"})):
        return True  # whether its fleet's ingest is online (mqtt.hold_until_ingest)
    if len(parts) != 5 or parts[:4] != ["edgefleet", "v1", dev.fleet, dev.id]:
        return False
    if acc == WRITE:
        return parts[4] in DEVICE_PUBLISH
    if acc in (READ, SUBSCRIBE):
        return parts[4] in DEVICE_READ
    return False

