"""What crosses MQTT between agents and the fleet: topics, message kinds, validation.

Topic layout (fleet = fleet id, device = device id):
  edgefleet/v1/{fleet}/{device}/telemetry   device -> fleet, QoS 1, one message per (window, model role)
  edgefleet/v1/{fleet}/{device}/state       device -> fleet, QoS 1, retained, Last Will = offline
  edgefleet/v1/{fleet}/{device}/events      device -> fleet, QoS 1 (install results, refusals, rollbacks)
  edgefleet/v1/{fleet}/{device}/cmd         fleet -> device, QoS 1 (signed commands)
  edgefleet/ingest/{fleet}/{name}/status    ingest -> devices, retained, Last Will = offline

Every device message is a signed envelope {"payload": {...}, "signature": {...}} (agent.keys
.sign_document) made with the device's own key, so the fleet trusts what the device itself
reported. Every fleet command is signed with the fleet key and checked by the agent
(signature, target device, sequence number strictly increasing, expiry).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.keys import Keyring, SignatureError, verify_document

TOPIC_ROOT = "edgefleet/v1"
TELEMETRY_SCHEMA = "edgefleet.telemetry/v1"
STATE_SCHEMA = "edgefleet.state/v1"
EVENT_SCHEMA = "edgefleet.event/v1"
COMMAND_SCHEMA = "edgefleet.command/v1"
MAX_MESSAGE_BYTES = 256 * 1024
CLOCK_SKEW_S = 300
COMMAND_KINDS = ("install", "rollback", "shadow", "ab", "stop-candidate", "rotate-key", "telemetry-config",
                 "uninstall", "benchmark", "explain")
MODEL_ROLES = ("active", "shadow", "ab")


def topic(fleet: str, device: str, kind: str) -> str:
    return f"{TOPIC_ROOT}/{fleet}/{device}/{kind}"


INGEST_ROOT = "edgefleet/ingest"


def ingest_status_topic(fleet: str, name: str = "+") -> str:
    """Retained {"status": "online"|"offline"} of one ingest worker (Last Will: offline); "+" is
    the filter devices with `mqtt.hold_until_ingest` subscribe to. A broker restarted without
    persistence forgets it, so devices hold their outbox until ingest has resubscribed."""
    return f"{INGEST_ROOT}/{fleet}/{name}/status"


def parse_topic(t: str) -> tuple[str, str, str]:
    """(fleet, device, kind); ValueError when the topic is not ours."""
    parts = t.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != TOPIC_ROOT:
        raise ValueError(f"not an EdgeFleet topic: {t!r}")
    return parts[2], parts[3], parts[4]


class ProtocolError(Exception):
    """A message was refused; `reason` is a stable code for counting drops."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def decode(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError("oversized", f"{len(raw)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("malformed", f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ProtocolError("malformed", "not a JSON object")
    return doc


def verify_signed(doc: Mapping[str, Any], keyring: Keyring) -> dict[str, Any]:
    try:
        return verify_document(dict(doc), keyring)
    except SignatureError as exc:
        raise ProtocolError("bad-signature" if exc.reason != "malformed" else "malformed", str(exc)) from exc


def _require(payload: Mapping[str, Any], fields: Mapping[str, type | tuple[type, ...]], what: str) -> None:
    for name, typ in fields.items():
        if name not in payload:
            raise ProtocolError("malformed", f"{what} lacks '{name}'")
        value = payload[name]
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise ProtocolError("malformed", f"{what} field '{name}' has the wrong type")


def validate_telemetry(p: Mapping[str, Any]) -> None:
    """Shape checks for a telemetry payload (docs/telemetry.schema.json): the one check,
    agent.window_payload.check_wire, with the seq every sent window carries."""
    from agent.window_payload import check_wire  # it imports this module's constants

    try:
        check_wire(p, require_seq=True)
    except ValueError as exc:
        raise ProtocolError("malformed", str(exc)) from None


@dataclass
class CommandGuard:
    """Agent-side checks for fleet commands: trusted signature, addressed to us, fresh, not replayed.

    `last_seq` must be persisted by the caller after each accepted command (agent state dir),
    so a replay is refused across restarts too.
    """

    device_id: str
    keyring: Keyring
    last_seq: int = 0

    def check(self, doc: Mapping[str, Any], now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        payload = verify_signed(doc, self.keyring)
        _require(payload, {"schema": str, "id": str, "device": str, "seq": int, "issued_at": (int, float),
                           "expires_at": (int, float), "kind": str}, "command")
        if payload["schema"] != COMMAND_SCHEMA or payload["kind"] not in COMMAND_KINDS:
            raise ProtocolError("malformed", f"unknown command {payload['schema']}/{payload['kind']}")
        if payload["device"] != self.device_id:
            raise ProtocolError("wrong-device", f"command is for {payload['device']!r}")
        if payload["seq"] <= self.last_seq:
            raise ProtocolError("stale", f"sequence {payload['seq']} <= last accepted {self.last_seq}")
        if payload["expires_at"] < now:
            raise ProtocolError("expired", f"command expired at {payload['expires_at']}")
        if payload["issued_at"] > now + CLOCK_SKEW_S:
            raise ProtocolError("expired", "command issued in the future")
        self.last_seq = payload["seq"]
        return payload


def make_command(device: str, seq: int, kind: str, body: Mapping[str, Any], *, ttl_s: float = 3600,
                 command_id: str | None = None, now: float | None = None) -> dict[str, Any]:
    """An unsigned command payload; the fleet signs it with agent.keys.sign_document."""
    import uuid

    now = time.time() if now is None else now
    if kind not in COMMAND_KINDS:
        raise ValueError(f"unknown command kind {kind!r}")
    return {"schema": COMMAND_SCHEMA, "id": command_id or uuid.uuid4().hex, "device": device, "seq": int(seq),
            "issued_at": round(now, 3), "expires_at": round(now + ttl_s, 3), "kind": kind, **dict(body)}
