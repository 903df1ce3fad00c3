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


def record(session: Session, actor: str, action: str, target: str, before: Any, after: Any) -> AuditEntry:
    """Add an audit entry to `session` (committed with the change it describes)."""
    entry = AuditEntry(actor=actor, action=action, target=target, before=scrub(before), after=scrub(after))
    session.add(entry)
    log.info("audit", extra={"actor": actor, "action": action, "target": target})
    return entry


Entry = tuple[str, str, str, Any, Any]  # actor, action, target, before, after


def record_many(session: Session, entries: Sequence[Entry]) -> None:
    """Audit entries in one INSERT, in this order, in `session`'s transaction (ingest: a batch's
    device events and install changes, which as ORM objects cost more than the rest of storing them)."""
    if not entries:
        return
    at = now()
    session.flush()  # entries added one by one before these keep their place in the log
    session.execute(insert(AuditEntry), [  # type: ignore[arg-type]
        {"at": at, "actor": actor, "action": action, "target": target, "before": scrub(before), "after": scrub(after)}
        for actor, action, target, before, after in entries])
    for actor, action, target, _, _ in entries:
        log.info("audit", extra={"actor": actor, "action": action, "target": target})
