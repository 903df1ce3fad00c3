"""A PostgreSQL read replica for the dashboard reads (issue 19: "PostgreSQL with partitioning and
read replicas"): with `database_read_url` the device list, telemetry, aggregates, overview and
drift read a real streaming standby, while enrolment, changes, auth and single-device reads stay on
the primary. Shown by pausing the standby's replay: what the primary wrote meanwhile is missing
from the replica's pages and present on the primary's, until replay resumes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from fleet.devsim import SimDevice
from fleet.settings import SettingsError, load_settings
from tests.fleet.conftest import make_settings
from tests.fleet.pg_replica import Pair, primary_and_replica

H = {"Authorization": "Bearer operator-token"}


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    with primary_and_replica() as p:
        yield p


def _enrol(client: Any, dev: SimDevice) -> None:
    tok = client.post("/api/enrolment-tokens", json={}, headers=H)
    assert tok.status_code == 201, tok.json
    r = client.post("/api/enrol", json={"token": tok.json["token"], "public_key": dev.public_key_b64,
                                       "device_id": dev.device_id})
    assert r.status_code == 201, r.json


def _listed(client: Any) -> set[str]:
    r = client.get("/api/devices?limit=100", headers=H)
    assert r.status_code == 200, r.json
    return {d["id"] for d in r.json["items"]}


def _wait(cond: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := cond():
            return got
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_dashboard_reads_come_from_the_replica_and_writes_go_to_the_primary(pair, tmp_path, build_keys) -> None:  # type: ignore[no-untyped-def]
    from fleet.app import create_app, fleet_context

    s = make_settings(tmp_path, pair.primary_url, build_keys[1], database_read_url=pair.replica_url)
    app = create_app(s)  # migrates the primary; the standby replays the schema
    client = app.test_client()
    try:
        a, b = SimDevice("replica-a"), SimDevice("replica-b")
        _wait(lambda: pair.sql(pair.replica_url, "SELECT to_regclass('public.device') IS NOT NULL") == (True,))
        _enrol(client, a)
        _wait(lambda: a.device_id in _listed(client))

        pair.sql(pair.replica_url, "SELECT pg_wal_replay_pause()")
        _enrol(client, b)  # enrolment writes the primary (the standby would refuse the write)
        r = client.patch(f"/api/devices/{a.device_id}", json={"tags": ["moved"]}, headers=H)
        assert r.status_code == 200 and r.json["tags"] == ["moved"]
        assert client.get(f"/api/devices/{b.device_id}", headers=H).status_code == 200  # detail: the primary
        time.sleep(0.3)
        assert _listed(client) == {a.device_id}  # the list: the paused replica
        page = client.get("/console/devices", headers=H)
        assert page.status_code == 200 and a.device_id in page.text and b.device_id not in page.text
        assert client.get("/api/overview", headers=H).json["devices"]["total"] == 1
        assert client.get(f"/api/devices/{b.device_id}/events", headers=H).status_code == 404  # not there yet

        pair.sql(pair.replica_url, "SELECT pg_wal_replay_resume()")
        _wait(lambda: _listed(client) == {a.device_id, b.device_id})
        tagged = client.get("/api/devices?tag=moved", headers=H).json["items"]
        assert [d["id"] for d in tagged] == [a.device_id]
        assert client.get("/api/overview", headers=H).json["devices"]["total"] == 2
    finally:
        fleet_context(app).engine.dispose()
        fleet_context(app).read_engine.dispose()  # type: ignore[union-attr]


def test_read_url_is_configured_like_the_database_url_and_needs_postgresql(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = load_settings(env={"DATABASE_URL": "postgres://u@primary/db", "DATABASE_READ_URL": "postgres://u@replica/db"})
    assert s.database_read_url == "postgresql+psycopg://u@replica/db"
    cfg = tmp_path / "fleet.toml"
    cfg.write_text('[fleet]\ndatabase_read_url = "postgresql://u@replica/db"\n')
    with pytest.raises(SettingsError, match="database_read_url.*PostgreSQL"):
        load_settings(cfg, env={})  # the primary is the SQLite default
