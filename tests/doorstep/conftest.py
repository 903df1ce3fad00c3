"""Fixtures for the user's-path tests: a PostgreSQL database of their own, and the CLI run the
way a user runs it (the real entry point, a subprocess, the environment a shell would give)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.ingest.broker import reachable

REPO = Path(__file__).resolve().parents[2]
PG_ADMIN = os.environ.get("EDGEFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def pg_db() -> Iterator[str]:
    """A fresh database name on the local PostgreSQL (dropped afterwards)."""
    if not reachable("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not running at 127.0.0.1:5432")
    import psycopg

    name = f"edgefleet_doorstep_{os.getpid()}_{os.urandom(3).hex()}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def user_env(**extra: str) -> dict[str, str]:
    """A shell's environment without the fleet variables a developer may have exported."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("EDGEFLEET_") and k not in ("DATABASE_URL", "MQTT_URL")}
    env["PYTHONPATH"] = str(REPO)
    return {**env, **extra}


def edgefleet(*args: str, cwd: Path, env: dict[str, str] | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`edgefleet ARGS` through the real entry point (python -m edgefleet == the console script)."""
    return subprocess.run([sys.executable, "-m", "edgefleet", *args], cwd=cwd, env=env or user_env(),
                          capture_output=True, text=True, timeout=timeout)
