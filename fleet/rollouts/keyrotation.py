"""Key changes reach devices as a signed key list (agent.keylist), never as a bare key.

The operator signs the list offline with the root key (`edgefleet keys sign-keylist`) and
uploads it; the fleet checks it exactly as a device would (fleet_keys.store_keylist: root or a
threshold of fleet keys, a higher version) and sends it to every active device in a
`rotate-key` command. The fleet never holds the root key, so a compromised fleet host cannot add
a build key or a fleet key by itself.

Fleet signing-key rotation: the uploaded list names the new key next to the active one; the
fleet switches to the new key only once every device's own signed state lists it (or an
operator forces it). Until then each device gets commands signed with the newest key it trusts
(FleetSigner.key_for), so no command is ever unverifiable. A later list without the old key
retires it on the devices.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from agent.keylist import KeyListError, parse_keylist
from agent.keys import KeyFileError, key_id, load_private_key
from fleet import audit
from fleet.models import Device
from fleet.registry.fleet_keys import current_keylist, store_keylist
from fleet.rollouts import commands
from fleet.rollouts.models import FleetKey
from fleet.settings import FleetSettings

KEYLIST_STATUS = {"malformed": 400, "stale": 409, "untrusted": 422}
KEYLIST_HINT = ("sign a key list offline with the root key (`edgefleet keys sign-keylist`) and upload it"
                " (POST /api/rollouts/keys/keylist)")


class RotationError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status, self.code, self.details = status, code, details


def _keylist_error(exc: KeyListError) -> RotationError:
    return RotationError(KEYLIST_STATUS.get(exc.reason, 422), f"keylist-{exc.reason}", str(exc))


def publish_keylist(s: Session, signer: commands.FleetSigner, settings: FleetSettings, doc: Any, actor: str,
                    *, fleet: str = "default", ttl_s: float = 7 * 86400,
                    also_trust: tuple[str, ...] = ()) -> dict[str, Any]:
    """Accept a signed key list and queue a rotate-key command carrying it for every active
    device of the fleet (each signed with a fleet key that device trusts)."""
    must = [signer.active_id, *([key_id(signer.next)] if signer.next else []), *also_trust]
    try:
        kl = store_keylist(settings, doc, must_trust=must)
    except KeyListError as exc:
        raise _keylist_error(exc) from exc
    devices = s.exec(select(Device).where(Device.fleet == fleet, Device.status == "active")).all()
    for d in devices:
        commands.queue_command(s, d, "rotate-key", {"keylist": kl.document}, signer, ttl_s=ttl_s)
    result = {"version": kl.version, "devices": len(devices),
              **{role: kl.keys.ids(role) for role in ("root", "fleet", "build")}}
    audit.record(s, actor, "fleet-key.keylist.publish", f"keylist:v{kl.version}", None, result)
    return result


def keylist_status(settings: FleetSettings) -> dict[str, Any]:
    kl = current_keylist(settings)
    if kl is None:
        return {"version": 0, "keylist": None, "hint": KEYLIST_HINT}
    return {"version": kl.version, "keylist": kl.document,
            **{role: kl.keys.ids(role) for role in ("root", "fleet", "build")}}


def begin_rotation(s: Session, signer: commands.FleetSigner, new_key_path: Path | str, actor: str,
                   *, settings: FleetSettings, keylist: Any, fleet: str = "default",
                   ttl_s: float = 7 * 86400) -> dict[str, Any]:
    """Register the new key as `next` and send devices `keylist`, a root-signed key list that
    trusts both the active and the new key."""
    if keylist is None or not new_key_path:
        raise RotationError(409, "keylist-required", "a rotation needs `new_key_path` (the new fleet key, e.g."
                                                     " `edgefleet keys generate --name fleet-2`) and `keylist`: devices"
                                                     f" only learn a new fleet key from a signed key list; {KEYLIST_HINT},"
                                                     f" listing the new key and the active key {signer.active_id}")
    try:
        new_key = load_private_key(Path(new_key_path))
    except KeyFileError as exc:
        raise RotationError(400, "bad-key", str(exc)) from exc
    kid = key_id(new_key)
    if kid == signer.active_id:
        raise RotationError(409, "same-key", "the new key is the active key")
    if s.exec(select(FleetKey).where(FleetKey.status == "next", FleetKey.key_id != kid)).first():
        raise RotationError(409, "rotation-in-progress", "another rotation is not finished")
    try:
        fleet_ids = set(parse_keylist(keylist).keys.ids("fleet"))
    except KeyListError as exc:
        raise _keylist_error(exc) from exc
    if not {kid, signer.active_id} <= fleet_ids:
        raise RotationError(409, "keylist-mismatch", f"the key list must trust the new key {kid} and the active key"
                                                     f" {signer.active_id} as fleet keys; it has {sorted(fleet_ids)}")
    published = publish_keylist(s, signer, settings, keylist, actor, fleet=fleet, ttl_s=ttl_s, also_trust=(kid,))
    commands.register_key(s, new_key_path, "next")
    signer.next = new_key
    result = {"new_key_id": kid, "old_key_id": signer.active_id, "devices": published["devices"],
              "keylist_version": published["version"]}
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
    confirmed trusting the new key in their signed state, unless forced. Devices keep trusting
    the old key until a key list without it is published."""
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
