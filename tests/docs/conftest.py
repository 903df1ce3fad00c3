"""The docs tests share the user's-path fixtures (a fresh PostgreSQL database)."""

from tests.doorstep.conftest import pg_db  # noqa: F401
