"""Issue 11, seen 2 and 3: every `edgefleet fleet ...` command reads one configuration (fleet.toml
from --config / EDGEFLEET_CONFIG, then env, then defaults), says which database and fleet it uses
with the password masked, and accepts postgres:// URLs. Before, `enrol-token create` in a shell
without DATABASE_URL wrote to ./.edgefleet/fleet/fleet.db and the server on PostgreSQL refused
the token (403 invalid-token); `postgres://` raised NoSuchModuleError."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.devsim import SimDevice
from fleet.settings import SettingsError, load_settings, normalize_database_url
from tests.doorstep.conftest import edgefleet, user_env

pytestmark = pytest.mark.postgres


def test_enrol_token_lands_in_the_servers_database(tmp_path: Path, pg_db: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from fleet.app import create_app, fleet_context

    # the URL a hosting provider hands out: postgres://, with a password (trust auth ignores it)
    (tmp_path / "fleet.toml").write_text(
        f'[fleet]\ndata_dir = "data"\nfleet_id = "prod"\n'
        f'database_url = "postgres://postgres:s3cret@127.0.0.1:5432/{pg_db}"\n')
    env = user_env(EDGEFLEET_CONFIG=str(tmp_path / "fleet.toml"))
    up = edgefleet("fleet", "db", "upgrade", cwd=tmp_path, env=env)
    assert up.returncode == 0, up.stderr
    assert f"postgresql+psycopg://postgres:***@127.0.0.1:5432/{pg_db}" in up.stderr
    assert "fleet 'prod'" in up.stderr and "s3cret" not in up.stderr + up.stdout
    made = edgefleet("fleet", "enrol-token", "create", "--attr", "region=eu", cwd=tmp_path, env=env)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("enr_") and "s3cret" not in made.stderr
    assert not (tmp_path / ".edgefleet").exists() and not (tmp_path / "data" / "fleet.db").exists()

    # the server, started in the same folder and reading the same file, accepts the token
    monkeypatch.chdir(tmp_path)  # the file's data_dir = "data" is relative to where the server starts
    app = create_app(load_settings(tmp_path / "fleet.toml", env={}, start_rollouts=False, start_ingest=False,
                                   drift_interval_s=0))
    try:
        dev = SimDevice("door-1", fleet="prod")
        r = app.test_client().post("/api/enrol", json={"token": token, "public_key": dev.public_key_b64,
                                                       "device_id": "door-1"})
        assert r.status_code == 201, r.json
        assert "prod" in str(r.json)   # the device is told the fleet the file names
    finally:
        fleet_context(app).engine.dispose()


def test_missing_database_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = user_env(DATABASE_URL="postgresql://postgres@127.0.0.1:5432/edgefleet_no_such_database")
    res = edgefleet("fleet", "db", "upgrade", cwd=tmp_path, env=env)
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert err[-1].startswith("error: cannot use the database") and "does not exist" in err[-1]
    assert "Traceback" not in res.stderr and len(err) == 2   # "using ..." and the error


def test_settings_file_is_checked_against_the_schema(tmp_path: Path) -> None:
    bad = tmp_path / "fleet.toml"
    bad.write_text('[fleet]\nport = "eighty"\n')
    with pytest.raises(SettingsError, match="'port' must be int"):
        load_settings(bad, env={})
    bad.write_text('[fleet.ingest]\nbatch_sise = 10\n')
    with pytest.raises(SettingsError, match="'ingest.batch_sise'"):
        load_settings(bad, env={})
    res = edgefleet("fleet", "--config", str(bad), "db", "upgrade", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip() == "error: unknown fleet setting 'ingest.batch_sise'"
    assert normalize_database_url("postgres://u:p@h/d") == "postgresql+psycopg://u:p@h/d"
    with pytest.raises(SettingsError, match="not supported"):
        normalize_database_url("mysql://u@h/d")
