"""Profile on real devices (issue 13 item 8): the compiler hands the fleet a candidate bundle, the
fleet runs it on one online device of the bundle's class with a fleet-signed `benchmark`
command and keeps the device's answer.

No table of its own: the candidate lives in the content-addressed artifact store (agents fetch
it from /artifacts/<sha256> like any bundle), the job is the signed command in the outbox
(RolloutCommand, kind `benchmark`, no rollout) and the answer is the device's signed
`benchmark-result` / `benchmark-failed` event (DeviceEvent with that command id). A profile's
id is its command id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from agent.keys import Keyring
from fleet import audit
from fleet.catalogue.versions import CatalogueError, verify_upload
from fleet.models import Device, DeviceEvent, now
from fleet.rollouts.models import RolloutCommand
from fleet.settings import FleetSettings

KIND = "benchmark"
ANSWERS = ("benchmark-result", "benchmark-failed", "command-refused")


class ProfileError(CatalogueError):
    """A profile request the fleet refuses (same shape as an upload refusal)."""


@dataclass(frozen=True)
class ProfileRequest:
    fleet: str
    warmup: int = 5
    runs: int = 50
    device_id: str | None = None
    ttl_s: float = 600.0


def pick_device(db: Session, fleet: str, device_class: str, device_id: str | None = None) -> Device | None:
    """The online active device of the class seen most recently (or the one asked for, if online)."""
    q = select(Device).where(Device.fleet == fleet, Device.device_class == device_class,
                             Device.status == "active", Device.online == True)  # noqa: E712 - SQL
    if device_id:
        q = q.where(Device.id == device_id)
    return db.exec(q.order_by(Device.last_seen.desc(), Device.id)).first()  # type: ignore[union-attr]


def submit(db: Session, settings: FleetSettings, bundle_file: Path, keyring: Keyring, signer: Any,
           req: ProfileRequest, actor: str) -> dict[str, Any]:
    """Verify the candidate (build key), store it, queue the signed command. Consumes `bundle_file`."""
    from fleet.catalogue.artifacts import store_artifact
    from fleet.rollouts.commands import artifact_url, queue_command

    bundle_file = Path(bundle_file)
    try:
        vb = verify_upload(bundle_file, keyring, ProfileError)
        dc = vb.manifest["model"]["device_class"]
        dev = pick_device(db, req.fleet, dc, req.device_id)
        if dev is None:
            which = f"device {req.device_id} of class {dc}" if req.device_id else f"device of class {dc}"
            raise ProfileError(409, "no-device-online", f"no {which} is online in fleet {req.fleet}")
        size = bundle_file.stat().st_size
        store_artifact(settings, vb.bundle_sha256, bundle_file)
    finally:
        bundle_file.unlink(missing_ok=True)
    m = vb.manifest["model"]
    cand = {"name": m["name"], "version": m["version"], "manifest_sha256": vb.manifest_sha256,
            "bundle_sha256": vb.bundle_sha256, "size": size,
            "url": artifact_url(_Ref(vb.bundle_sha256), settings.public_url)}
    cmd = queue_command(db, dev, KIND, {"candidate": cand, "warmup": req.warmup, "runs": req.runs}, signer,
                        ttl_s=req.ttl_s)
    out = {"id": cmd.command_id, "status": "pending", "device_id": dev.id, "device_class": dc,
           "candidate": cand, "warmup": req.warmup, "runs": req.runs, "expires_at": cmd.expires_at}
    audit.record(db, actor, "profile.submit", f"device:{dev.id}", None, out)
    return out


@dataclass(frozen=True)
class _Ref:
    bundle_sha256: str


def result(db: Session, profile_id: str) -> dict[str, Any]:
    """pending | done (p50_ms, p99_ms, ... from the device) | failed (the device's reason) | expired."""
    cmd = db.exec(select(RolloutCommand).where(RolloutCommand.command_id == profile_id,
                                               RolloutCommand.kind == KIND)).first()
    if cmd is None:
        raise ProfileError(404, "not-found", f"no profile {profile_id}")
    events = db.exec(select(DeviceEvent).where(DeviceEvent.command_id == profile_id,
                                               DeviceEvent.device_id == cmd.device_id,
                                               DeviceEvent.kind.in_(ANSWERS))  # type: ignore[attr-defined]
                     .order_by(DeviceEvent.seq)).all()
    # a forged copy refused by the device is not its answer to what we signed
    answer = next((e for e in events if not (e.details or {}).get("unverified")), None)
    out: dict[str, Any] = {"id": profile_id, "device_id": cmd.device_id, "sent": cmd.sent_at is not None}
    if answer is None:
        status = "expired" if cmd.expires_at < now() else "pending"
        return {**out, "status": status, "result": None, "reason": "the command expired before the device"
                                                                    " answered" if status == "expired" else None}
    if answer.kind == "benchmark-result":
        return {**out, "status": "done", "result": answer.details, "reason": None}
    return {**out, "status": "failed", "result": None, "reason": answer.reason,
            "code": (answer.details or {}).get("code")}


def discard(db: Session, settings: FleetSettings, profile_id: str, actor: str) -> dict[str, Any]:
    """Delete a profile's candidate from the artifact store (the compiler does once it has its
    numbers, or gave up), unless a catalogue version holds the same bytes. The command and the
    device's answer stay (history); a device that had not fetched it yet reports download-failed."""
    from fleet.catalogue.versions import artifact_path
    from fleet.models import ModelVersion

    cmd = db.exec(select(RolloutCommand).where(RolloutCommand.command_id == profile_id,
                                               RolloutCommand.kind == KIND)).first()
    if cmd is None:
        raise ProfileError(404, "not-found", f"no profile {profile_id}")
    sha = str(((cmd.document or {}).get("payload") or {}).get("candidate", {}).get("bundle_sha256", ""))
    in_catalogue = db.exec(select(ModelVersion.id).where(ModelVersion.bundle_sha256 == sha)).first() is not None
    path = artifact_path(settings, sha)
    deleted = not in_catalogue and path.exists()
    if deleted:
        path.unlink(missing_ok=True)
    audit.record(db, actor, "profile.discard", f"device:{cmd.device_id}", None,
                 {"id": profile_id, "bundle_sha256": sha, "artifact_deleted": deleted})
    return {"id": profile_id, "bundle_sha256": sha, "artifact_deleted": deleted}
