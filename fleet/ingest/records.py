"""Ingest's writes of device events and state (fleet.ingest.store calls them inside its batch
transaction): events are idempotent on (device, seq), a state never overwrites a newer one."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from fleet import audit
from fleet.models import Device, DeviceEvent


def insert_ignore(engine: Engine, model: Any) -> Any:
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(model)


def store_events(db: Session, engine: Engine, events: list[Any], ts: float) -> tuple[int, int]:
    """Device events, idempotent on (device, seq); each new one audited. Returns (stored, duplicates)."""
    rows = {}
    for p in events:
        pl = p.payload
        assert pl is not None
        rows.setdefault((p.device, pl["seq"]), {
            "device_id": p.device, "seq": pl["seq"], "time": float(pl.get("time") or ts), "kind": pl["kind"],
            "command_id": pl.get("command_id"), "reason": pl.get("reason"),
            "details": pl.get("details") if isinstance(pl.get("details"), dict) else {}, "received_at": ts})
    stmt = insert_ignore(engine, DeviceEvent).on_conflict_do_nothing(
        index_elements=["device_id", "seq"]).returning(DeviceEvent.device_id, DeviceEvent.seq)
    inserted = {(r[0], r[1]) for r in db.execute(stmt, list(rows.values())).all()}
    audit.record_many(db, [(f"device:{r['device_id']}", f"event.{r['kind']}", f"device:{r['device_id']}", None,
                            {"seq": r["seq"], "command_id": r["command_id"], "reason": r["reason"],
                             "details": r["details"]}) for r in map(rows.__getitem__, sorted(inserted))])
    return len(inserted), len(events) - len(inserted)

def store_states(db: Session, states: list[Any], ts: float) -> None:
    """The newest signed state per device (by seq); an install change is audited. The batch's
    devices are read and locked together: every agent sends its state when it reconnects, so a
    broker restart brings one from each device at once (and every ingest process stores each)."""
    latest: dict[str, Any] = {}
    for p in states:
        cur = latest.get(p.device)
        if p.payload is None:
            if cur is None:
                latest[p.device] = p
            continue
        if cur is None or cur.payload is None or p.payload["seq"] > cur.payload["seq"]:
            latest[p.device] = p
    loaded = _lock_devices(db, sorted(latest))
    installs: list[audit.Entry] = []
    for device_id, p in sorted(latest.items()):
        d = loaded.get(device_id)
        if d is None:
            continue
        if p.payload is None:
            d.online = False
            db.add(d)
            continue
        pl = p.payload
        if pl["seq"] <= d.state_seq:
            continue  # an older state (redelivery, retained copy) never overwrites a newer one
        inst = pl.get("installed") if isinstance(pl.get("installed"), dict) else None
        prev = pl.get("previous") if isinstance(pl.get("previous"), dict) else None
        before = {"installed_name": d.installed_name, "installed_version": d.installed_version,
                  "installed_manifest_sha256": d.installed_manifest_sha256}
        d.installed_name = inst.get("name") if inst else None
        d.installed_version = inst.get("version") if inst else None
        d.installed_manifest_sha256 = inst.get("manifest_sha256") if inst else None
        d.installed_bundle_sha256 = inst.get("bundle_sha256") if inst else None
        d.previous_version = prev.get("version") if prev else None
        d.agent_version = pl.get("agent_version")
        d.state, d.state_seq = pl, pl["seq"]
        d.online = pl.get("status", "online") == "online"
        d.last_seen = max(d.last_seen or 0.0, ts)
        d.last_seq = max(d.last_seq, pl["seq"])
        if not d.device_class and isinstance(pl.get("device_class"), str):
            d.device_class = pl["device_class"]
        db.add(d)
        after = {"installed_name": d.installed_name, "installed_version": d.installed_version,
                 "installed_manifest_sha256": d.installed_manifest_sha256}
        if after != before:
            installs.append((f"device:{device_id}", "device.installed", f"device:{device_id}", before, after))
    audit.record_many(db, installs)


LOCK_CHUNK = 500  # devices per SELECT ... FOR UPDATE (bound parameters stay well under the limits)


def _lock_devices(db: Session, ids: list[str]) -> dict[str, Device]:
    """The devices with these ids (sorted: concurrent ingest processes lock rows in one order and
    never deadlock), loaded and locked for update in one statement per LOCK_CHUNK."""
    out: dict[str, Device] = {}
    for i in range(0, len(ids), LOCK_CHUNK):
        q = select(Device).where(Device.id.in_(ids[i:i + LOCK_CHUNK])).order_by(Device.id).with_for_update()  # type: ignore[attr-defined]
        out.update((d.id, d) for d in db.exec(q))
    return out
