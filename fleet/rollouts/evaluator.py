"""The rollout evaluator: one tick reads the evidence of every live rollout's current wave and
advances, waits, pauses or rolls back. All state is in the database, so a restarted process
resumes where the last one stopped.

Scale-out safety: a process acts on a rollout only while it holds that rollout's lease
(EvaluatorLease, taken by one conditional UPDATE) and, on PostgreSQL, while it holds the
rollout row with SELECT ... FOR UPDATE SKIP LOCKED for the whole deciding transaction. A
second process therefore skips a rollout another one is working on and, when it gets its turn,
sees the decisions already committed: nothing is commanded twice.

The decision itself is tick.step (states.py holds the moves it may make); this module is the loop.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from fleet.rollouts import commands
from fleet.rollouts.config import ACTOR, OPERATOR_LEASE, EvaluatorConfig
from fleet.rollouts.leases import acquire_lease, holds_lease, release_all, release_lease
from fleet.rollouts.models import ROLLBACK_UNCONFIRMED, Rollout, RolloutCommand, RolloutTarget
from fleet.rollouts.states import LIVE_ROLLOUTS, TargetState
from fleet.rollouts.tick import step

log = logging.getLogger(__name__)
__all__ = ["ACTOR", "OPERATOR_LEASE", "Evaluator", "EvaluatorConfig", "acquire_lease", "holds_lease", "main",
           "release_lease", "start_for_app", "step"]


class Evaluator:
    """Ticks every live rollout; safe to run in several processes against one database."""

    def __init__(self, engine: Engine, publisher: commands.Publisher | None, signer: commands.FleetSigner,
                 cfg: EvaluatorConfig | None = None) -> None:
        self.engine = engine
        self.publisher = publisher
        self.signer = signer
        self.cfg = cfg or EvaluatorConfig()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.owns_publisher = False     # start_for_app made it: stop() closes it

    def live_rollouts(self) -> list[int]:
        with Session(self.engine) as s:
            live = s.exec(select(Rollout.id).where(Rollout.status.in_(LIVE_ROLLOUTS))).all()
            tracking = s.exec(select(RolloutTarget.rollout_id).where(RolloutTarget.status == TargetState.ROLLING_BACK)
                              .distinct()).all()
            # a late confirmation can still heal an unconfirmed rollback while its command is valid
            healing = s.exec(select(RolloutTarget.rollout_id).where(
                RolloutTarget.status == TargetState.FAILED, RolloutTarget.reason.startswith(ROLLBACK_UNCONFIRMED),
                RolloutTarget.commanded_at > time.time() - self.cfg.command_ttl_s).distinct()).all()
            # unsent commands (a crashed holder's): the next lease holder publishes them
            unsent = s.exec(select(RolloutCommand.rollout_id).where(
                RolloutCommand.sent_at.is_(None), RolloutCommand.rollout_id.is_not(None),
                RolloutCommand.expires_at > time.time()).distinct()).all()
        return sorted(set(live) | set(tracking) | set(healing) | {x for x in unsent if x is not None})

    def tick(self, at: float | None = None) -> list[str]:
        actions: list[str] = []
        for rid in self.live_rollouts():
            actions.extend(self.tick_rollout(rid, at))
        # operator commands (rollback-version, rotate-key): published by one process at a time
        if self.publisher is not None and acquire_lease(self.engine, OPERATOR_LEASE, self.cfg.holder,
                                                        self.cfg.lease_ttl_s, at):
            commands.flush_outbox(self.engine, self.publisher, unowned=True)
        return actions

    def tick_rollout(self, rollout_id: int, at: float | None = None) -> list[str]:
        now_ = time.time() if at is None else at
        lease = f"rollout:{rollout_id}"
        if not acquire_lease(self.engine, lease, self.cfg.holder, self.cfg.lease_ttl_s, now_):
            return []
        actions: list[str] = []
        with Session(self.engine, expire_on_commit=False) as s:
            q = select(Rollout).where(Rollout.id == rollout_id)
            if self.engine.dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True)
            r = s.exec(q).first()
            if r is None:
                return []
            if not holds_lease(s, lease, self.cfg.holder, now_):
                return []
            try:
                actions = step(s, r, self.signer, self.cfg, now_)
                s.commit()
            except Exception:
                s.rollback()
                log.exception("rollout tick failed", extra={"rollout": rollout_id})
                raise
        if self.publisher is not None:
            commands.flush_outbox(self.engine, self.publisher, rollout_id=rollout_id)
        return actions

    def run(self, interval_s: float = 1.0, stop: threading.Event | None = None) -> None:
        stop = stop or self._stop
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # keep the loop alive; the failure is logged with its rollout
                log.exception("evaluator tick failed")
            stop.wait(interval_s)

    def start(self, interval_s: float = 1.0) -> threading.Thread:
        """Run in a daemon thread (the fleet `serve` process); stop() ends it."""
        self._thread = threading.Thread(target=self.run, args=(interval_s,), name="rollout-evaluator", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        """Stop the loop and give up this process's leases, so a successor takes over at once
        (after a crash it waits for the lease to expire instead)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        release_all(self.engine, self.cfg.holder)
        if self.owns_publisher and hasattr(self.publisher, "close"):
            self.publisher.close()  # type: ignore[union-attr]
            self.owns_publisher = False


def start_for_app(app: Any, interval_s: float = 1.0) -> Evaluator:
    """Start an evaluator beside a fleet app (settings from its FleetContext)."""
    from fleet.app import fleet_context

    ctx = fleet_context(app)
    st = ctx.settings
    with Session(ctx.engine, expire_on_commit=False) as s:
        signer = commands.load_signer(s, st.signing_key_path or st.data_dir / "keys" / "fleet.key")
        s.commit()
    publisher = commands.MqttPublisher.from_url(st.mqtt_url, st.mqtt_ca_file)
    ev = Evaluator(ctx.engine, publisher, signer, EvaluatorConfig(public_url=st.public_url))
    ev.owns_publisher = True
    ctx.extras["rollout_evaluator"] = ev
    ctx.extras["rollout_publisher"] = publisher
    ev.start(interval_s)
    return ev


def main(argv: list[str] | None = None) -> int:
    """`python -m fleet.rollouts.evaluator`: a standalone evaluator process (scale-out, tests)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--database-url", required=True)
    p.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883")
    p.add_argument("--key", required=True, help="fleet signing key (PEM) used when none is registered")
    p.add_argument("--public-url", default="http://127.0.0.1:8080")
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: forever)")
    p.add_argument("--record-every", type=float, default=5.0)
    p.add_argument("--lease-ttl", type=float, default=5.0)
    p.add_argument("--holder", default="")
    args = p.parse_args(argv)
    logging.basicConfig(level=os.environ.get("EDGEFLEET_LOG_LEVEL", "WARNING"))
    from fleet.db import make_engine

    engine = make_engine(args.database_url)
    with Session(engine, expire_on_commit=False) as s:
        signer = commands.load_signer(s, args.key)
        s.commit()
    publisher = commands.MqttPublisher.from_url(args.mqtt_url)
    cfg = EvaluatorConfig(public_url=args.public_url, record_every_s=args.record_every, lease_ttl_s=args.lease_ttl)
    if args.holder:
        cfg.holder = args.holder
    ev = Evaluator(engine, publisher, signer, cfg)
    stop = threading.Event()
    if args.duration:
        threading.Timer(args.duration, stop.set).start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        ev.run(args.interval, stop)
    finally:
        ev.stop()
        publisher.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
