"""Fixtures: a fleet app on SQLite and on PostgreSQL (own database per test session, own schema
per test), the real Mosquitto broker, a trusted build key and simulated devices."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.keys import generate_keypair, load_private_key
from fleet.devsim import make_baseline
from fleet.ingest.broker import reachable
from fleet.settings import FleetSettings

PG_ADMIN = os.environ.get("EDGEFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
PG_DB = f"edgefleet_test_{os.getpid()}"
_counter = itertools.count(1)
TOKENS = {"admin-token": "admin", "operator-token": "operator", "viewer-token": "viewer"}


def _pg_available() -> bool:
    return reachable("127.0.0.1", 5432)


@pytest.fixture(scope="session")
def pg_database():  # type: ignore[no-untyped-def]
    if not _pg_available():
        pytest.skip("PostgreSQL is not running at 127.0.0.1:5432")
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{PG_DB}"')
        conn.execute(f'CREATE DATABASE "{PG_DB}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{PG_DB}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    base = request.getfixturevalue("pg_database")
    import psycopg

    schema = f"t{next(_counter)}"
    with psycopg.connect(base.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return f"{base}?options=-csearch_path%3D{schema}"


@pytest.fixture(scope="session")
def broker() -> tuple[str, int]:
    """The real Mosquitto at 127.0.0.1:1883 (started if it is not running)."""
    if not reachable("127.0.0.1", 1883):
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        subprocess.run([binary, "-d", "-c", "/etc/mosquitto/mosquitto.conf"], check=False)
        for _ in range(50):
            if reachable("127.0.0.1", 1883):
                break
            time.sleep(0.1)
        else:
            pytest.skip("Mosquitto is not reachable at 127.0.0.1:1883")
    return "127.0.0.1", 1883


@pytest.fixture(scope="session")
def build_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Ed25519PrivateKey, Path]:
    d = tmp_path_factory.mktemp("buildkeys")
    priv, pub = generate_keypair(d, "build")
    return load_private_key(priv), pub


@pytest.fixture(scope="session")
def baseline() -> dict[str, Any]:
    return make_baseline(seed=1)


def unique_fleet_id() -> str:
    # Topics are per fleet id: tests never see each other's (or other engineers') messages.
    return f"t{os.getpid()}x{next(_counter)}x{time.time_ns() % 10**6}"


@dataclass
class FleetUnderTest:
    settings: FleetSettings
    app: Any
    client: Any
    build_key: Ed25519PrivateKey
    tmp: Path

    @property
    def ctx(self) -> Any:
        from fleet.app import fleet_context

        return fleet_context(self.app)

    def h(self, role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {role}-token"}


def make_settings(tmp: Path, db_url: str, build_pub: Path, **kw: Any) -> FleetSettings:
    s = FleetSettings(data_dir=tmp / "fleetdata", database_url=db_url, fleet_id=unique_fleet_id(),
                      trusted_build_keys=[build_pub], api_tokens=dict(TOKENS), drift_interval_s=0,
                      start_rollouts=False)
    s.ingest.device_cache_s = 0.2
    s.drift.min_samples = 500
    for k, v in kw.items():
        setattr(s, k, v)
    return s


@pytest.fixture
def fleet(db_url: str, tmp_path: Path, build_keys: tuple[Ed25519PrivateKey, Path]) -> FleetUnderTest:
    from fleet.app import create_app, fleet_context

    s = make_settings(tmp_path, db_url, build_keys[1])
    app = create_app(s)
    yield FleetUnderTest(s, app, app.test_client(), build_keys[0], tmp_path)
    fleet_context(app).engine.dispose()
