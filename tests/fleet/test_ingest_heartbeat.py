"""The ingest heartbeat beats on its own autocommit connection (cheap: it runs every second in
every ingest process) and rides out that connection's loss, as it rode out a blip before."""

from __future__ import annotations

import time

from sqlalchemy import text
from sqlmodel import Session

from fleet.db import init_db, make_engine
from fleet.ingest import health
from fleet.rollouts.models import IngestHeartbeat


def _row(engine, name: str) -> IngestHeartbeat:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        row = s.get(IngestHeartbeat, name)
        assert row is not None
        return row


def _beats_after(engine, name: str, t: float, timeout: float = 8.0) -> IngestHeartbeat:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = _row(engine, name)
        if row.updated_at > t:
            return row
        time.sleep(0.1)
    raise AssertionError(f"no beat after {t}")


def test_heartbeat_beats_and_comes_back_after_its_connection_dies(db_url, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(health, "BEAT_S", 0.2)
    engine = make_engine(db_url)
    init_db(engine)
    depth = [0]
    hb = health.Heartbeat(engine, "hb-test", 60, lambda: (True, 1.0, depth[0])).start()
    try:
        first = _row(engine, "hb-test")  # start() inserted the row
        assert first.connected and not first.stopped
        depth[0] = 7
        assert _beats_after(engine, "hb-test", first.updated_at).queue_depth == 7  # the loop's own connection
        if engine.dialect.name == "postgresql":  # kill every other backend of this database: the beat's too
            with engine.connect() as c:
                killed = c.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                        "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()
                assert killed and killed >= 1
        t = time.time()
        depth[0] = 9
        assert _beats_after(engine, "hb-test", t).queue_depth == 9
    finally:
        hb.stop()
    last = _row(engine, "hb-test")
    assert last.stopped and not last.connected


def test_a_beat_updates_one_row_per_identity(tmp_path) -> None:  # type: ignore[no-untyped-def]
    n = 3
    engine = make_engine(f"sqlite:///{tmp_path / 'f.db'}")
    init_db(engine)
    for i in range(n):
        health.Heartbeat(engine, f"i{i}", 0, lambda: (False, None, 0)).beat()
    with engine.begin() as c:
        health.Heartbeat(engine, "i0", 0, lambda: (True, 2.0, 3)).beat(conn=c)
    with Session(engine) as s:
        rows = {r.name: r for r in s.query(IngestHeartbeat).all()}
    assert set(rows) == {f"i{i}" for i in range(n)}
    assert rows["i0"].connected and rows["i0"].queue_depth == 3 and not rows["i1"].connected
