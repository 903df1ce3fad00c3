"""Ask devices to explain sampled live requests (issue 15 item 4): a fleet-signed `explain` command.

The device explains the next `count` requests that pass its `sample_rate` draw with its own runtime
(agent/explain.py) and answers each with an `explanation` event: per-feature attributions, the
prediction and the latency it cost, never the raw input unless the device has raw sampling on.
Events arrive through the ordinary signed event ingest (DeviceEvent rows, kind "explanation").
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, select

from fleet.models import Device, DeviceEvent
from fleet.rollouts.commands import FleetSigner, queue_command
from fleet.rollouts.models import RolloutCommand

MAX_COUNT = 100  # agent.explain.MAX_COUNT


def request_explanations(session: Session, device: Device, signer: FleetSigner, *, count: int = 5,
                         sample_rate: float = 1.0, top_k: int | None = 10, ttl_s: float = 3600.0) -> RolloutCommand:
    """Queue the signed command (published by the command outbox after commit)."""
    if not 1 <= int(count) <= MAX_COUNT:
        raise ValueError(f"count must be in [1, {MAX_COUNT}]")
    if not 0 < float(sample_rate) <= 1:
        raise ValueError("sample_rate must be in (0, 1]")
    body: dict[str, Any] = {"count": int(count), "sample_rate": float(sample_rate)}
    if top_k is not None:
        body["top_k"] = int(top_k)
    return queue_command(session, device, "explain", body, signer, ttl_s=ttl_s)


def explanations(session: Session, device_id: str, command_id: str | None = None,
                 limit: int = 100) -> list[dict[str, Any]]:
    """The explanation events a device sent (newest first), optionally for one command."""
    q = select(DeviceEvent).where(DeviceEvent.device_id == device_id, DeviceEvent.kind == "explanation")
    if command_id:
        q = q.where(DeviceEvent.command_id == command_id)
    rows = session.exec(q.order_by(DeviceEvent.id.desc()).limit(limit))  # type: ignore[union-attr]
    return [{"command_id": r.command_id, **(r.details or {})} for r in rows]
