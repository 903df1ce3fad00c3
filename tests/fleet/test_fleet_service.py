"""Settings, migrations, CLI, the production server and the embedded broker."""

from __future__ import annotations

import time

import numpy as np
import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import inspect, text
from sqlmodel import Session, select

from fleet.cli import fleet as fleet_cli
from fleet.db import init_db, make_engine
from fleet.migrate import current
from fleet.models import Device
from fleet.settings import load_settings, parse_tokens


def test_settings_file_then_env(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "fleet.toml"
    cfg.write_text('[fleet]\nfleet_id = "plant"\nport = 9000\n[fleet.drift]\npsi_alert = 0.3\n')
    s = load_settings(cfg, env={"DATABASE_URL": "postgresql+psycopg://u:secretpw@db/x", "MQTT_URL": "mqtt://b:1884",
                                "EDGEFLEET_API_TOKENS": "admin:tok-1,viewer:tok-2"})
    assert (s.fleet_id, s.port, s.drift.psi_alert, s.drift.psi_warn) == ("plant", 9000, 0.3, 0.1)
    assert s.mqtt_url == "mqtt://b:1884" and s.api_tokens == {"tok-1": "admin", "tok-2": "viewer"}
    assert "secretpw" not in repr(s) and "tok-1" not in repr(s)
    with pytest.raises(ValueError):
        load_settings(None, env={}, bogus=1)
    with pytest.raises(ValueError):
        parse_tokens("admin")


def test_migrations_create_schema_and_keep_data(db_url) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(db_url)
    init_db(engine)
    assert current(engine) == "0008"
    tables = set(inspect(engine).get_table_names())
    assert {"device", "modelversion", "telemetrywindow", "aggregate", "auditentry", "apitoken",
            "enrolmenttoken", "driftalert", "deviceevent", "alembic_version", "rollout", "rollout_wave",
            "rollout_target", "rollout_command", "device_version_windows", "model_owner", "model_version_status", "model_review", "predictionrecord",
            "outcomelabel"} <= tables
    with Session(engine) as db:
        db.add(Device(id="keep-me", attributes={"region": "eu"}))
        db.commit()
    init_db(engine)  # upgrading again is a no-op that keeps data
    with Session(engine) as db:
        assert db.get(Device, "keep-me").attributes == {"region": "eu"}
        assert db.exec(text("select version_num from alembic_version")).one()[0] == "0008"
    engine.dispose()


def test_migration_0002_adopts_rollout_tables_made_by_create_all(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A database from before 0002 (at 0001, rollout tables from create_all) upgrades in place."""
    from sqlmodel import SQLModel

    import fleet.rollouts.models  # noqa: F401  (registers the rollout tables)
    from fleet.migrate import upgrade

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(engine, "0001")
    SQLModel.metadata.create_all(engine)
    assert current(engine) == "0001"
    init_db(engine)
    assert current(engine) == "0008"
    engine.dispose()


def test_cli_commands(tmp_path, build_keys, baseline, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from fleet.devsim import make_bundle

    monkeypatch.setenv("EDGEFLEET_TRUSTED_BUILD_KEYS", str(build_keys[1]))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    r = CliRunner()
    d = ["--data-dir", str(tmp_path / "data")]
    out = r.invoke(fleet_cli, d + ["db", "upgrade"])
    assert out.exit_code == 0 and "0008" in out.output
    tok = r.invoke(fleet_cli, d + ["token", "create", "--role", "operator"])
    assert tok.exit_code == 0 and tok.stdout.strip().startswith("eft_")  # stderr says which database
    enr = r.invoke(fleet_cli, d + ["enrol-token", "create", "--attr", "region=eu"])
    assert enr.exit_code == 0 and enr.stdout.strip().startswith("enr_")
    make_bundle(tmp_path / "b.tar", build_keys[0], version=4, baseline=baseline)
    up = r.invoke(fleet_cli, d + ["models", "upload", str(tmp_path / "b.tar")])
    assert up.exit_code == 0 and "added: digits v4" in up.output
    (tmp_path / "bad.tar").write_bytes(b"junk" * 100)
    bad = r.invoke(fleet_cli, d + ["models", "upload", str(tmp_path / "bad.tar")])
    assert bad.exit_code == 1
    ls = r.invoke(fleet_cli, d + ["devices", "list", "--json"])
    assert ls.exit_code == 0 and ls.stdout.strip() == "[]"


@pytest.mark.slow
def test_production_server_with_embedded_amqtt_broker(tmp_path, build_keys, baseline) -> None:  # type: ignore[no-untyped-def]
    """waitress + an in-process amqtt broker (MQTT 3.1.1): ingest falls back to plain subscriptions."""
    from fleet.devsim import MqttPublisher, SimDevice, enrol
    from fleet.ingest.broker import start_embedded_broker
    from fleet.server import FleetServer
    from tests.fleet.conftest import make_settings

    broker = start_embedded_broker(prefer="amqtt")
    try:
        s = make_settings(tmp_path, f"sqlite:///{tmp_path / 'f.db'}", build_keys[1], mqtt_url=broker.url)
        srv = FleetServer(s, production=True, port=0).start()
        try:
            assert srv.ingest.mqtt5 is False and not srv.ingest.topics()[0].startswith("$share")
            tok = requests.post(f"{srv.url}/api/enrolment-tokens", headers={"Authorization": "Bearer admin-token"},
                                json={}, timeout=10).json()["token"]
            dev = SimDevice("amq-1", fleet=s.fleet_id)
            enrol(srv.url, tok, dev)
            pub = MqttPublisher(broker.host, broker.port, "amq-1", mqtt5=False)
            pub.publish(dev.topic("telemetry"), dev.sign(dev.telemetry(np.random.default_rng(0), baseline)))
            pub.close()
            deadline = time.monotonic() + 15
            while srv.ingest.stats.snapshot()["stored"].get("telemetry", 0) < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert srv.ingest.stats.snapshot()["stored"]["telemetry"] == 1
            r = requests.get(f"{srv.url}/api/devices/amq-1", headers={"Authorization": "Bearer viewer-token"},
                             timeout=10)
            assert r.status_code == 200 and r.json()["last_seen"] is not None
            with Session(srv.engine) as db:
                assert db.exec(select(Device)).one().id == "amq-1"
        finally:
            srv.stop()
    finally:
        broker.stop()


@pytest.mark.slow
def test_embedded_mosquitto_speaks_mqtt5() -> None:
    from fleet.ingest.broker import speaks_mqtt5, start_embedded_broker

    b = start_embedded_broker()
    try:
        assert b.kind == "mosquitto" and speaks_mqtt5(b.host, b.port)
    finally:
        b.stop()


@pytest.mark.slow
def test_cli_serve_process_answers_and_stops(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`python -m fleet serve` as a real process: API up, ingest subscribed, clean exit on SIGINT."""
    import os
    import signal
    import subprocess
    import sys

    from fleet.ingest.broker import free_port

    port = free_port()
    env = {**os.environ, "EDGEFLEET_API_TOKENS": "viewer:cli-viewer", "EDGEFLEET_FLEET_ID": f"cli{os.getpid()}"}
    env.pop("DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "fleet", "--data-dir", str(tmp_path / "d"), "serve",
                             "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            try:
                r = requests.get(f"http://127.0.0.1:{port}/api/ingest/stats",
                                 headers={"Authorization": "Bearer cli-viewer"}, timeout=2)
                if r.status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        else:
            raise AssertionError("serve did not come up")
        assert r.json()["running"] is True and r.json()["topics"][0].endswith("/+/telemetry")
        assert requests.get(f"http://127.0.0.1:{port}/api/devices", timeout=5).status_code == 401
        assert (tmp_path / "d" / "fleet.db").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert "console:" in out and "Traceback" not in out


def test_add_bundle_creates_the_artifact_store(tmp_path, build_keys, baseline) -> None:  # type: ignore[no-untyped-def]
    from agent.keys import Keyring, load_public_key
    from fleet.catalogue.versions import add_bundle
    from fleet.db import session_scope
    from fleet.devsim import make_bundle
    from fleet.settings import FleetSettings

    s = FleetSettings(data_dir=tmp_path / "fresh")
    engine = make_engine(None, data_dir=s.data_dir)
    init_db(engine)
    vb = make_bundle(tmp_path / "b.tar", build_keys[0], version=7, baseline=baseline)
    assert not s.artifacts_dir.exists()
    with session_scope(engine) as db:
        res = add_bundle(db, s, tmp_path / "b.tar", Keyring.from_public_keys([load_public_key(build_keys[1])]), "t")
    assert res.created and (s.artifacts_dir / vb.bundle_sha256).is_file()
    assert not (tmp_path / "b.tar").exists()  # the upload was moved into the store
    engine.dispose()
