"""Ask devices to explain sampled live requests (issue 15 item 4): a fleet-signed `explain` command.

The device explains the next `count` requests that pass its `sample_rate` draw with its own runtime
(agent/explain.py) and answers each with an `explanation` event: per-feature attributions, the
prediction and the latency it cost, never the raw input unless the device has raw sampling on.
Events arrive through the ordinary signed event ingest (DeviceEvent rows, kind "explanation").
The REST API (fleet/api/explain.py) and `edgefleet explain` (edgefleet/ops/explain.py) call these.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, select

from fleet import audit
from fleet.errors import ApiError
from fleet.models import Device, DeviceEvent, now
from fleet.rollouts.commands import FleetSigner, queue_command
from fleet.rollouts.models import RolloutCommand

MAX_COUNT = 100  # agent.explain.MAX_COUNT
ANSWERS = ("explanation", "explanation-failed", "command-refused")  # the device's answers to the command


class ExplainRequestError(ApiError):
    """Why the fleet will not ask this device now: an HTTP status, a stable code, one line (the
    API's error handler answers it as it is)."""


# (condition, status, code, message): checked in order; the first that holds refuses the request
REFUSALS = (
    (lambda d: d.status != "active", 409, "device-not-active",
     "device {id} is {status}: it takes no commands"),
    (lambda d: not d.installed_name, 409, "no-model-installed",
     "device {id} serves no model yet: there is nothing to explain"),
)


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


def request_for(session: Session, device_id: str, signer: FleetSigner, actor: str, **options: Any) -> dict[str, Any]:
    """The API's request: refuse an unknown (404) or unable (409) device, queue, audit; the request's view."""
    device = session.get(Device, device_id)
    if device is None:
        raise ExplainRequestError(404, "not-found", f"no device {device_id!r}")
    for refused, status, code, message in REFUSALS:
        if refused(device):
            raise ExplainRequestError(status, code, message.format(id=device.id, status=device.status))
    row = request_explanations(session, device, signer, **options)
    view = request_view(row, device, [])
    audit.record(session, actor, "device.explain", device.id, None,
                 {"command_id": row.command_id, **{k: view[k] for k in ("count", "sample_rate", "top_k")}})
    return view


def explanations(session: Session, device_id: str, command_id: str | None = None,
                 limit: int = 100) -> list[dict[str, Any]]:
    """The explanation events a device sent (newest first), optionally for one command."""
    q = select(DeviceEvent).where(DeviceEvent.device_id == device_id, DeviceEvent.kind == "explanation")
    if command_id:
        q = q.where(DeviceEvent.command_id == command_id)
    rows = session.exec(q.order_by(DeviceEvent.id.desc()).limit(limit))  # type: ignore[union-attr]
    return [{"command_id": r.command_id, **(r.details or {})} for r in rows]


def request_status(session: Session, device_id: str, command_id: str) -> dict[str, Any]:
    """One request and what the device answered so far (explanations oldest first)."""
    device = session.get(Device, device_id)
    if device is None:
        raise ExplainRequestError(404, "not-found", f"no device {device_id!r}")
    row = session.exec(select(RolloutCommand).where(RolloutCommand.device_id == device_id,
                                                    RolloutCommand.command_id == command_id,
                                                    RolloutCommand.kind == "explain")).first()
    if row is None:
        raise ExplainRequestError(404, "not-found", f"device {device_id} has no explain request {command_id!r}")
    events = session.exec(select(DeviceEvent).where(DeviceEvent.device_id == device_id,
                                                    DeviceEvent.command_id == command_id,
                                                    DeviceEvent.kind.in_(ANSWERS))  # type: ignore[attr-defined]
                          .order_by(DeviceEvent.seq)).all()
    return request_view(row, device, list(events))


def _state(row: RolloutCommand, done: int, count: int, refused: bool, at: float) -> str:
    """queued -> sent -> partial -> complete; refused by the device; expired before it answered in full."""
    if refused:
        return "refused"
    if done >= count:
        return "complete"
    if row.expires_at and at >= row.expires_at:
        return "expired"
    return "partial" if done else ("sent" if row.sent_at else "queued")


def request_view(row: RolloutCommand, device: Device, events: list[DeviceEvent]) -> dict[str, Any]:
    payload = (row.document or {}).get("payload") or {}
    count = int(payload.get("count", 0))
    items = [{"seq": e.seq, "time": e.time, **(e.details or {})} for e in events if e.kind == "explanation"]
    failures = [{"seq": e.seq, "time": e.time, "reason": e.reason, **(e.details or {})}
                for e in events if e.kind == "explanation-failed"]
    refusal = next((e.reason for e in events if e.kind == "command-refused"), None)
    return {"device_id": device.id, "command_id": row.command_id, "count": count,
            "sample_rate": payload.get("sample_rate", 1.0), "top_k": payload.get("top_k"),
            "model": device.installed_name, "version": device.installed_version,
            "created_at": row.created_at, "sent_at": row.sent_at, "expires_at": row.expires_at,
            "status": _state(row, len(items) + len(failures), count, refusal is not None, now()),
            "received": len(items), "failed": len(failures), "refused": refusal,
            "explanations": items, "failures": failures}
