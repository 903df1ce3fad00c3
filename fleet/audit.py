"""Append-only audit log: who changed what, when, with the state before and after."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session

from fleet.models import AuditEntry, now

log = logging.getLogger(__name__)
_SECRET_KEYS = {"token", "password", "secret", "mqtt_password", "password_hash", "token_hash", "mqtt_password_hash"}


def scrub(value: Any) -> Any:
    """Drop secret-looking keys so the audit log never stores a credential."""
    if isinstance(value, dict):
        return {k: ("***" if k in _SECRET_KEYS else scrub(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


Entry = tuple[str, str, str, Any, Any]  # actor, action, target, before, after


def _fields(entry: Entry) -> dict[str, Any]:
    """An entry's columns, secrets scrubbed, and its log line."""
    actor, action, target, before, after = entry
    log.info("audit", extra={"actor": actor, "action": action, "target": target})
    return {"actor": actor, "action": action, "target": target, "before": scrub(before), "after": scrub(after)}


def record(session: Session, actor: str, action: str, target: str, before: Any, after: Any) -> AuditEntry:
    """Add an audit entry to `session` (committed with the change it describes)."""
    entry = AuditEntry(**_fields((actor, action, target, before, after)))
    session.add(entry)
    return entry


def record_many(session: Session, entries: Sequence[Entry]) -> None:
    """Audit entries in one INSERT, in this order, in `session`'s transaction (ingest: a batch's
    device events and install changes, which as ORM objects cost more than the rest of storing them)."""
    if not entries:
        return
    at = now()
    session.flush()  # entries added one by one before these keep their place in the log
    session.execute(insert(AuditEntry), [{"at": at, **_fields(e)} for e in entries])  # type: ignore[arg-type]
