from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from fleet.db import init_db, make_engine

PG_ADMIN = os.environ.get("EDGEFLEET_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """SQLite by default; EDGEFLEET_ROLLOUT_TEST_DB=postgresql runs every unit test on PostgreSQL."""
    if os.environ.get("EDGEFLEET_ROLLOUT_TEST_DB", "sqlite").startswith("postgres"):
        url = request.getfixturevalue("pg_url")
        eng = make_engine(url)
    else:
        eng = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    init_db(eng)
    yield eng
    eng.dispose()


def _pg_available() -> bool:
    try:
        eng = create_engine(PG_ADMIN, connect_args={"connect_timeout": 2})
        with eng.connect():
            pass
        eng.dispose()
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database of our own (others share the server), dropped afterwards."""
    if not _pg_available():
        pytest.skip("PostgreSQL is not reachable at " + PG_ADMIN)
    name = f"edgefleet_rollout_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        with admin.connect() as c:
            c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    eng = make_engine(pg_url)
    init_db(eng)
    yield eng
    eng.dispose()
