"""Append-only audit log: who changed what, when, with the state before and after."""

from __future__ import annotations

import logging
from typing import Any

from sqlmodel import Session

from fleet.models import AuditEntry

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
