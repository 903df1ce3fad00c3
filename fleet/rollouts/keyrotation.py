"""Fleet signing-key rotation: devices learn to trust the new key from a rotate-key command
signed by the old one, and the fleet switches to the new key only once every device's own
signed state lists it (or an operator forces it). Until then each device gets commands signed
with the newest key it trusts (FleetSigner.key_for), so no command is ever unverifiable.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from agent.keys import key_id, load_private_key, public_key_to_b64
from fleet import audit
from fleet.models import Device
from fleet.rollouts import commands
from fleet.rollouts.models import FleetKey


class RotationError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status, self.code, self.details = status, code, details


def begin_rotation(s: Session, signer: commands.FleetSigner, new_key_path: Path | str, actor: str,
                   *, fleet: str = "default", ttl_s: float = 7 * 86400) -> dict[str, Any]:
    """Register the new key as `next` and queue a rotate-key command (signed by the active key)
    for every active device of the fleet."""
    new_key = load_private_key(Path(new_key_path))
    kid = key_id(new_key)
    if kid == signer.active_id:
        raise RotationError(409, "same-key", "the new key is the active key")
    if s.exec(select(FleetKey).where(FleetKey.status == "next", FleetKey.key_id != kid)).first():
        raise RotationError(409, "rotation-in-progress", "another rotation is not finished")
    commands.register_key(s, new_key_path, "next")
    devices = s.exec(select(Device).where(Device.fleet == fleet, Device.status == "active")).all()
    body = {"new_key": public_key_to_b64(new_key.public_key()), "retire": None}
    for d in devices:
        commands.queue_command(s, d, "rotate-key", body, signer, ttl_s=ttl_s, key=signer.active)
    signer.next = new_key
    result = {"new_key_id": kid, "old_key_id": signer.active_id, "devices": len(devices)}
    audit.record(s, actor, "fleet-key.rotate.begin", f"fleet-key:{kid}", None, result)
    return result


def rotation_status(s: Session) -> dict[str, Any]:
    nxt = s.exec(select(FleetKey).where(FleetKey.status == "next")).first()
    keys = [{"key_id": k.key_id, "status": k.status, "created_at": k.created_at}
            for k in s.exec(select(FleetKey).order_by(FleetKey.created_at)).all()]
    if nxt is None:
        return {"keys": keys, "rotating": False}
    devices = s.exec(select(Device).where(Device.status == "active")).all()
    pending = [d.id for d in devices
               if nxt.key_id not in ((d.state or {}).get("trusted_fleet_keys") or [])]
    return {"keys": keys, "rotating": True, "next": nxt.key_id, "pending_devices": len(pending),
            "pending": pending[:100]}


def finish_rotation(s: Session, actor: str, *, force: bool = False) -> dict[str, Any]:
    """Make the `next` key active and retire the old one; refused while devices have not
    confirmed trusting the new key in their signed state, unless forced."""
    st = rotation_status(s)
    if not st["rotating"]:
        raise RotationError(409, "not-rotating", "no rotation in progress")
    if st["pending_devices"] and not force:
        raise RotationError(409, "devices-pending", f"{st['pending_devices']} devices do not trust the new key yet",
                            st["pending"])
    at = time.time()
    for k in s.exec(select(FleetKey).where(FleetKey.status == "active")).all():
        k.status, k.retired_at = "retired", at
        s.add(k)
    nxt = s.get(FleetKey, st["next"])
    nxt.status, nxt.activated_at = "active", at
    s.add(nxt)
    audit.record(s, actor, "fleet-key.rotate.finish", f"fleet-key:{nxt.key_id}", None,
                 {"active": nxt.key_id, "forced": force, "pending_devices": st["pending_devices"]})
    return {"active": nxt.key_id, "forced": force}
