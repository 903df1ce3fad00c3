"""Decommission a model (issue 16): a fleet-signed `uninstall` command to every active device of
a fleet (or of one device class); the agent unloads the model, deletes its files and reports an
`uninstalled` event (agent.uninstall). The catalogue keeps the versions' records; their
artifacts are kept or purged by policy (`purge_artifacts`). Audited with the reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, select

from fleet import audit
from fleet.catalogue.lifecycle import LifecycleError
from fleet.models import Device, ModelVersion
from fleet.settings import FleetSettings


@dataclass
class Decommission:
    name: str
    fleet: str
    reason: str
    device_class: str | None = None
    version: int | None = None
    purge_artifacts: bool = False


def decommission(db: Session, settings: FleetSettings, d: Decommission, signer: Any, actor: str) -> dict[str, Any]:
    """Queue signed uninstall commands (published after commit) and apply the artifact policy."""
    from fleet.rollouts.commands import queue_command

    if not d.reason.strip():
        raise LifecycleError(400, "reason-required", "a decommission needs a reason")
    q = select(ModelVersion).where(ModelVersion.name == d.name)
    if d.version is not None:
        q = q.where(ModelVersion.version == d.version)
    if d.device_class:
        q = q.where(ModelVersion.device_class == d.device_class)
    builds = list(db.exec(q))
    if not builds:
        raise LifecycleError(404, "not-found", f"no {d.name}" + (f" v{d.version}" if d.version is not None else "")
                             + (f" for {d.device_class}" if d.device_class else ""))
    dq = select(Device).where(Device.fleet == d.fleet, Device.status == "active")
    if d.device_class:
        dq = dq.where(Device.device_class == d.device_class)
    devices = list(db.exec(dq.order_by(Device.id)))
    model = {"name": d.name, **({"version": d.version} if d.version is not None else {})}
    commands = [queue_command(db, dev, "uninstall", {"model": model}, signer).command_id for dev in devices]
    purged = _purge(db, settings, builds) if d.purge_artifacts else []
    out = {"model": d.name, "version": d.version, "fleet": d.fleet, "device_class": d.device_class,
           "devices": [dev.id for dev in devices], "commands": commands, "purged_artifacts": purged,
           "kept_artifacts": [] if d.purge_artifacts else sorted({b.bundle_sha256 for b in builds})}
    audit.record(db, actor, "model.decommission", f"model:{d.name}", None, {**out, "reason": d.reason})
    return out


def _purge(db: Session, settings: FleetSettings, builds: list[ModelVersion]) -> list[str]:
    """Delete the artifacts of `builds` unless another catalogue row still points at the same
    bytes; the catalogue rows stay (history, cards, audit)."""
    from fleet.catalogue.versions import artifact_path

    gone = []
    ids = {b.id for b in builds}
    for sha in sorted({b.bundle_sha256 for b in builds}):
        shared = db.exec(select(ModelVersion.id).where(ModelVersion.bundle_sha256 == sha)).all()
        if any(i not in ids for i in shared):
            continue
        artifact_path(settings, sha).unlink(missing_ok=True)
        gone.append(sha)
    return gone
