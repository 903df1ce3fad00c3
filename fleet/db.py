"""Engine and sessions: SQLite file by default, PostgreSQL through DATABASE_URL.

`init_db` runs the alembic migrations to head (so an upgrade keeps data), then creates any
table that has no migration yet (e.g. a newly added module's models) so development never
blocks on a missing revision.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, create_engine

from agent.private_files import private_dir, private_file

log = logging.getLogger(__name__)


class RawJSON(dict):  # type: ignore[type-arg]
    """A parsed JSON object that remembers its exact (signed, canonical) text, so storing it
    costs no second serialisation and the database holds the bytes the device signed."""

    __slots__ = ("raw",)

    def __init__(self, parsed: dict, raw: str) -> None:  # type: ignore[type-arg]
        super().__init__(parsed)
        self.raw = raw


def json_dumps(obj: object) -> str:
    if isinstance(obj, RawJSON):
        return obj.raw
    return json.dumps(obj, allow_nan=False, separators=(",", ":"))


def sqlite_url(path: Path | str) -> str:
    return f"sqlite:///{Path(path)}"


def make_engine(url: str | None = None, *, data_dir: Path | str | None = None, echo: bool = False) -> Engine:
    """An engine for `url`, or for fleet.db (SQLite) in `data_dir` when no URL is given."""
    from fleet.settings import absolute, normalize_database_url

    url = normalize_database_url(url)
    if not url:
        base = absolute(data_dir or ".edgefleet/fleet")
        private_dir(base)
        private_file(base / "fleet.db")  # 0600 before SQLite opens it; its -wal/-shm files inherit the mode
        url = sqlite_url(base / "fleet.db")
    if url.startswith("sqlite"):
        engine = create_engine(url, echo=echo, json_serializer=json_dumps,
                               connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, echo=echo, json_serializer=json_dumps, pool_pre_ping=True, pool_size=10,
                         max_overflow=20)


def read_engine(primary: Engine, replica_url: str | None = None) -> Engine:
    """The engine of dashboard reads (FleetContext.read_session): the read replica when one is
    configured, else the primary's pool; on PostgreSQL its transactions are READ ONLY either way,
    so a read path that writes fails in every test on PostgreSQL, not first on a replica."""
    engine = make_engine(replica_url) if replica_url else primary
    return engine.execution_options(postgresql_readonly=True) if is_postgres(engine) else engine


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets the console read while ingest writes; NORMAL sync is safe with WAL.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def init_db(engine: Engine, *, migrate: bool = True) -> None:
    """Bring the schema to the newest revision; create tables that have no migration yet."""
    import fleet.models  # noqa: F401  (registers the tables)

    try:  # rollout tables live with the rollout engineer; register them when present
        import fleet.rollouts.models  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        pass
    with _schema_lock(engine):
        if migrate:
            from fleet.migrate import upgrade

            upgrade(engine)
        SQLModel.metadata.create_all(engine, checkfirst=True)


SCHEMA_LOCK_KEY = 0x65646765666C74  # "edgeflt": one advisory lock for every fleet process's schema changes


@contextmanager
def _schema_lock(engine: Engine) -> Iterator[None]:
    """On PostgreSQL, one process at a time brings the schema up: API workers, ingest and evaluator
    processes started together on a new database would otherwise create the same tables and types
    at once, and all but one crash (UniqueViolation on pg_type). A session advisory lock on its own
    connection; the others wait, then find the schema current."""
    if not is_postgres(engine):
        yield
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": SCHEMA_LOCK_KEY})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": SCHEMA_LOCK_KEY})


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
