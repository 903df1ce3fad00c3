"""Evaluator leases: who may act on a rollout right now. Taken by one conditional UPDATE, so two
processes never both hold one; expiry lets another process take over after a crash."""

from __future__ import annotations

import time

from sqlalchemy import or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from fleet.rollouts.models import EvaluatorLease


def acquire_lease(engine: Engine, name: str, holder: str, ttl_s: float, at: float | None = None) -> bool:
    """Take or renew the lease `name`; False when another holder has an unexpired one."""
    at = time.time() if at is None else at
    with Session(engine) as s:
        res = s.execute(update(EvaluatorLease)
                        .where(EvaluatorLease.name == name,
                               or_(EvaluatorLease.holder == holder, EvaluatorLease.expires_at < at))
                        .values(holder=holder, expires_at=at + ttl_s, acquired_at=at))
        if res.rowcount == 1:
            s.commit()
            return True
        s.rollback()
        if s.get(EvaluatorLease, name) is not None:
            return False
        s.add(EvaluatorLease(name=name, holder=holder, expires_at=at + ttl_s, acquired_at=at))
        try:
            s.commit()
        except IntegrityError:
            s.rollback()
            return False
        return True


def release_lease(engine: Engine, name: str, holder: str) -> None:
    with Session(engine) as s:
        s.execute(update(EvaluatorLease).where(EvaluatorLease.name == name, EvaluatorLease.holder == holder)
                  .values(expires_at=0.0))
        s.commit()


def release_all(engine: Engine, holder: str) -> None:
    """Give up every lease of a stopping process, so a successor takes over at once."""
    with Session(engine) as s:
        s.execute(update(EvaluatorLease).where(EvaluatorLease.holder == holder).values(expires_at=0.0))
        s.commit()


def holds_lease(s: Session, name: str, holder: str, at: float) -> bool:
    row = s.exec(select(EvaluatorLease).where(EvaluatorLease.name == name)).first()
    return bool(row and row.holder == holder and row.expires_at >= at)
