"""Signed deployment commands: per-device sequence numbers, fleet-key signatures, an outbox, and
an MQTT publisher (QoS 1 to edgefleet/v1/{fleet}/{device}/cmd).

The sequence number comes from Device.command_seq with one atomic UPDATE ... RETURNING, so
two processes never hand out the same number and the agent's CommandGuard (strictly increasing
seq) accepts them in order. Commands go into RolloutCommand in the deciding transaction and are
published after commit (outbox), so a crash never loses a decision nor signs it twice.

Key rotation: FleetKey rows hold the public halves. A `next` key is announced with a rotate-key
command signed by the active key; each device is then signed for with the newest key its own
signed state says it trusts (state.trusted_fleet_keys), so no device ever gets a command it
cannot verify.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from agent.bundle import make_rollback_approval
from agent.keys import generate_keypair, key_id, load_private_key, public_key_to_b64, sign_document
from agent.protocol import make_command, topic
from fleet.models import Device, ModelVersion, now
from fleet.rollouts.models import FleetKey, RolloutCommand

log = logging.getLogger(__name__)
DEFAULT_TTL_S = 3600.0


# ------------------------------------------------------------------------------------------
# keys


@dataclass
class FleetSigner:
    """The fleet's command keys: `active` signs by default; `next` (during a rotation) signs for
    devices whose signed state already lists it as trusted."""

    active: Ed25519PrivateKey
    next: Ed25519PrivateKey | None = None
    retired: dict[str, Ed25519PrivateKey] = field(default_factory=dict)

    @property
    def active_id(self) -> str:
        return key_id(self.active)

    def key_for(self, trusted: Iterable[str] | None) -> Ed25519PrivateKey:
        trusted = set(trusted or ())
        if self.next is not None and key_id(self.next) in trusted:
            return self.next
        if trusted and self.active_id not in trusted:
            for k in self.retired.values():   # a device that missed the rotation still trusts an old key
                if key_id(k) in trusted:
                    return k
        return self.active

    @classmethod
    def from_file(cls, path: Path | str) -> FleetSigner:
        return cls(load_private_key(Path(path)))


def ensure_key_file(path: Path) -> Path:
    """Create the fleet key at `path` (name.key + name.pub) when it does not exist yet."""
    path = Path(path)
    if not path.exists():
        generate_keypair(path.parent, path.stem)
    return path


def register_key(session: Session, path: Path | str, status: str = "active") -> FleetKey:
    """Record a key; INSERT ... ON CONFLICT DO NOTHING, so evaluator processes starting together
    on an empty table all succeed (one row wins, the others read it)."""
    key = load_private_key(Path(path))
    kid = key_id(key)
    row = session.get(FleetKey, kid)
    if row is None:
        dialect = session.get_bind().dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        session.execute(insert(FleetKey).values(
            key_id=kid, public_key=public_key_to_b64(key.public_key()), private_key_path=str(path), status=status,
            created_at=now(), activated_at=now() if status == "active" else None)
            .on_conflict_do_nothing(index_elements=["key_id"]))
        row = session.get(FleetKey, kid, populate_existing=True)
        assert row is not None
    return row


def load_signer(session: Session, default_key_path: Path | str) -> FleetSigner:
    """The signer described by FleetKey rows; the default key becomes the active one on first use."""
    rows = session.exec(select(FleetKey)).all()
    if not rows:
        register_key(session, ensure_key_file(Path(default_key_path)), "active")
        rows = session.exec(select(FleetKey)).all()
    active = [r for r in rows if r.status == "active"]
    nxt = [r for r in rows if r.status == "next"]
    retired = {r.key_id: load_private_key(Path(r.private_key_path)) for r in rows
               if r.status == "retired" and Path(r.private_key_path).exists()}
    return FleetSigner(load_private_key(Path(active[0].private_key_path)),
                       load_private_key(Path(nxt[0].private_key_path)) if nxt else None, retired)


# ------------------------------------------------------------------------------------------
# model references


def model_ref(mv: ModelVersion, public_url: str) -> dict[str, Any]:
    """The `model` object of install/rollback/shadow/ab commands."""
    return {"name": mv.name, "version": mv.version, "manifest_sha256": mv.manifest_sha256,
            "bundle_sha256": mv.bundle_sha256, "size": mv.size, "url": artifact_url(mv, public_url)}


def artifact_url(mv: ModelVersion, public_url: str) -> str:
    """Where agents download the bundle (fleet.catalogue.artifacts serves /artifacts/<bundle sha256>)."""
    return f"{public_url.rstrip('/')}/artifacts/{mv.bundle_sha256}"


def rollback_body(mv: ModelVersion, signer: FleetSigner, public_url: str,
                  trusted: Iterable[str] | None = None) -> dict[str, Any]:
    approval = make_rollback_approval(signer.key_for(trusted), mv.name, mv.version, mv.manifest_sha256)
    return {"model": model_ref(mv, public_url), "rollback_approval": dict(approval.document)}


# ------------------------------------------------------------------------------------------
# outbox


def next_command_seq(session: Session, device_id: str) -> int:
    """Atomically bump Device.command_seq and return the new value (no lost updates).

    On PostgreSQL the bump commits on its own connection at once, so the deciding transaction
    never holds Device row locks that ingest (which updates the same rows from signed state)
    could deadlock against; a decision that later rolls back only leaves a gap in the sequence,
    which the agent accepts (it needs strictly increasing, not consecutive). SQLite has a single
    writer, so there the bump stays in the caller's transaction."""
    stmt = (update(Device).where(Device.id == device_id).values(command_seq=Device.command_seq + 1)
            .returning(Device.command_seq))
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        engine = bind.engine if hasattr(bind, "engine") else bind
        with engine.connect() as conn:
            value = conn.execute(stmt).scalar_one()
            conn.commit()
        return int(value)
    return int(session.execute(stmt).scalar_one())


def queue_command(session: Session, device: Device, kind: str, body: Mapping[str, Any], signer: FleetSigner,
                  *, rollout_id: int | None = None, ttl_s: float = DEFAULT_TTL_S,
                  at: float | None = None, key: Ed25519PrivateKey | None = None) -> RolloutCommand:
    """Sign a command for `device` and put it in the outbox (published after commit). `key`
    forces the signing key (rotate-key must be signed by a key the device already trusts)."""
    at = now() if at is None else at
    seq = next_command_seq(session, device.id)
    payload = make_command(device.id, seq, kind, body, ttl_s=ttl_s, now=at)
    trusted = (device.state or {}).get("trusted_fleet_keys") if isinstance(device.state, dict) else None
    doc = sign_document(payload, key or signer.key_for(trusted))
    row = RolloutCommand(rollout_id=rollout_id, device_id=device.id, fleet=device.fleet, seq=seq, kind=kind,
                         command_id=payload["id"], document=doc, created_at=at, expires_at=payload["expires_at"])
    session.add(row)
    log.info("command queued", extra={"device": device.id, "kind": kind, "seq": seq, "rollout": rollout_id})
    return row


def requeue(session: Session, command_ids: Iterable[str], at: float | None = None) -> int:
    """Mark delivered commands unsent so the outbox publishes the same signed documents again
    (a broker restart can lose what it had queued for a device). Safe by construction: a device
    that already has one answers the copy with its original result (duplicate)."""
    ids = [c for c in command_ids if c]
    if not ids:
        return 0
    at = now() if at is None else at
    res = session.execute(update(RolloutCommand).where(RolloutCommand.command_id.in_(ids),
                                                       RolloutCommand.sent_at.is_not(None),
                                                       RolloutCommand.expires_at > at).values(sent_at=None))
    return int(res.rowcount or 0)


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes) -> bool: ...


def flush_outbox(engine: Engine, publisher: Publisher, *, rollout_id: int | None = None,
                 unowned: bool = False, limit: int = 5000) -> int:
    """Publish unsent commands in creation order; returns how many went out.

    With `rollout_id`, only that rollout's commands: the caller holds its lease, and only the
    lease holder ever publishes a rollout's commands (a restarted process re-publishes what its
    crashed predecessor left unsent only once it holds the lease). With `unowned`, only operator
    commands that belong to no rollout (rollback-version, rotate-key). A command published but
    not yet marked sent when a process died goes out again: the device refuses the copy as stale
    and its answer to the original stands (fleet.rollouts.evidence treats stale as a duplicate),
    so a re-publish is safe. Rows are locked (SKIP LOCKED on PostgreSQL) while publishing, so
    two processes never publish the same row. `sent_at` is set when the broker acknowledged the
    publish (PUBACK): device timeouts count from there.
    """
    t = now()
    sent = 0
    with Session(engine, expire_on_commit=False) as session:
        q = select(RolloutCommand).where(RolloutCommand.sent_at.is_(None), RolloutCommand.expires_at > t)
        if rollout_id is not None:
            q = q.where(RolloutCommand.rollout_id == rollout_id)
        elif unowned:
            q = q.where(RolloutCommand.rollout_id.is_(None))
        q = q.order_by(RolloutCommand.id).limit(limit)
        if engine.dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)
        rows = session.exec(q).all()
        for row in rows:
            ok = publisher.publish(topic(row.fleet, row.device_id, "cmd"), json.dumps(row.document).encode())
            row.attempts += 1
            if not ok:
                break     # keep per-device order: a later seq must never overtake an unsent earlier one
            row.sent_at = now()
            sent += 1
        session.commit()
    return sent


# ------------------------------------------------------------------------------------------
# MQTT


class MqttPublisher:
    """One paho client publishing QoS 1; `publish` waits for the broker's PUBACK (bounded)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, *, client_id: str = "",
                 username: str | None = None, password: str | None = None, timeout_s: float = 5.0,
                 address: Any = None) -> None:
        import paho.mqtt.client as mqtt

        from fleet.ingest.broker import BrokerAddress

        address = address or BrokerAddress(host, port, username, password)
        host, port = address.host, address.port

        self.timeout_s = timeout_s
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or
                                   f"edgefleet-rollouts-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        address.configure(self._client)
        self._connected = threading.Event()
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = lambda *a: self._connected.clear()
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)
        self._client.reconnect_delay_set(0.5, 5)   # bounded: a blink costs seconds, not minutes
        # connect in the background: a broker that is down at start is retried, never fatal
        self._client.connect_async(host, port, keepalive=30)
        self._client.loop_start()
        self._connected.wait(timeout_s)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if not getattr(rc, "is_failure", False):
            self._connected.set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @classmethod
    def from_url(cls, url: str | None, ca_file: str = "", **kw: Any) -> MqttPublisher:
        from fleet.ingest.broker import broker_address

        return cls(address=broker_address(url, ca_file), **kw)

    def publish(self, topic: str, payload: bytes) -> bool:
        """True once the broker acknowledged it; False at once while disconnected (the command
        stays in the outbox and goes out on a later flush)."""
        if not self._connected.is_set():
            return False
        info = self._client.publish(topic, payload, qos=1)
        try:
            info.wait_for_publish(self.timeout_s)
        except (RuntimeError, ValueError) as exc:
            log.warning("publish failed", extra={"topic": topic, "error": str(exc)})
            return False
        return info.is_published()

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


@dataclass
class RecordingPublisher:
    """Keeps what would have been published (unit tests, dry runs)."""

    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fail: bool = False

    def publish(self, topic: str, payload: bytes) -> bool:
        if self.fail:
            return False
        self.messages.append((topic, json.loads(payload)))
        return True
