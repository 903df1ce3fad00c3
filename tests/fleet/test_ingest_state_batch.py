"""Device states in bulk (a broker restart: every agent republishes its state on reconnect, and
every ingest process stores each): a batch's devices are read and locked in one statement per
chunk, not one per device, with the same rules (newest seq wins, an install change audited once)."""

from __future__ import annotations

from sqlalchemy import event
from sqlmodel import Session, select

from fleet.devsim import SimDevice
from fleet.ingest import records
from fleet.ingest.store import Processor
from fleet.models import AuditEntry, Device
from tests.fleet.test_ingest_trust import _enrol

INSTALLED = {"name": "digits", "version": 3, "manifest_sha256": "a" * 64, "bundle_sha256": "b" * 64}


def test_a_batch_of_states_reads_its_devices_in_chunks_and_keeps_the_newest(fleet, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(records, "LOCK_CHUNK", 2)
    devs = [SimDevice(f"s{i}") for i in range(5)]
    for d in devs:
        _enrol(fleet, d)
    older = {d.device_id: d.state(installed={**INSTALLED, "version": 2}) for d in devs}
    newer = {d.device_id: d.state(installed=INSTALLED) for d in devs}
    # each device's newer state first, its older one after it, in the same batch
    msgs = [(d.topic("state"), d.sign(p[d.device_id])) for p in (newer, older) for d in devs]
    proc = Processor(fleet.settings, fleet.ctx.engine)
    parsed = proc.parse_many(msgs)
    assert all(p is not None for p in parsed)

    reads: list[str] = []

    def count(conn, cursor, statement, params, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT") and "FROM device" in statement:
            reads.append(statement)

    event.listen(fleet.ctx.engine, "before_cursor_execute", count)
    try:
        proc.store(parsed)
    finally:
        event.remove(fleet.ctx.engine, "before_cursor_execute", count)
    assert len(reads) == 3, reads  # 5 devices in chunks of 2, not one read per state
    with Session(fleet.ctx.engine) as db:
        stored = {d.id: d for d in db.exec(select(Device))}
        audits = db.exec(select(AuditEntry).where(AuditEntry.action == "device.installed")).all()
    for d in devs:
        row = stored[d.device_id]
        assert (row.installed_version, row.state_seq) == (3, newer[d.device_id]["seq"])
        assert row.online and row.installed_manifest_sha256 == "a" * 64
    assert sorted(a.target for a in audits) == sorted(f"device:{d.device_id}" for d in devs)

    # a redelivered older state in a later batch changes nothing
    proc.store(proc.parse_many([(devs[0].topic("state"), devs[0].sign(older[devs[0].device_id]))]))
    with Session(fleet.ctx.engine) as db:
        assert db.get(Device, devs[0].device_id).installed_version == 3  # type: ignore[union-attr]
