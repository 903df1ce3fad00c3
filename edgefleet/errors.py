"""The one error boundary of the `edgefleet` command (and `python -m fleet`).

Commands raise; this turns what escapes into one line on stderr and an exit code: 2 for bad
input (a file, a URL, a database that is not there), 1 for a failed check (a refused bundle) or
something unexpected. The traceback is printed only with `edgefleet --debug` (or EDGEFLEET_DEBUG=1).
Exceptions are matched by qualified class name, so this module imports none of the libraries
whose errors it knows (the agent's install has no SQLAlchemy).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

EXIT_CHECK, EXIT_INPUT = 1, 2
_state = {"debug": False}


def set_debug(on: bool) -> None:
    _state["debug"] = on


def debugging() -> bool:
    return _state["debug"] or os.environ.get("EDGEFLEET_DEBUG", "") not in ("", "0")


def _first_line(obj: object) -> str:
    text = str(obj).strip()
    return text.splitlines()[0] if text else type(obj).__name__


def _db_reason(exc: BaseException) -> str:
    """psycopg/sqlite's own words (the driver error), not SQLAlchemy's SQL dump and help link."""
    return _first_line(getattr(exc, "orig", None) or exc)


def _os_error(exc: BaseException) -> str:
    assert isinstance(exc, OSError)
    where = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


# qualified exception class -> (exit code, one line saying what happened)
KNOWN: dict[str, tuple[int, Callable[[BaseException], str]]] = {
    "sqlalchemy.exc.OperationalError": (EXIT_INPUT, lambda e: f"cannot use the database: {_db_reason(e)}"),
    "sqlalchemy.exc.NoSuchModuleError": (EXIT_INPUT, lambda e: (
        f"unsupported database URL ({_first_line(e)}); use postgresql://USER:PASSWORD@HOST/DB or sqlite:///PATH")),
    "sqlalchemy.exc.ArgumentError": (EXIT_INPUT, lambda e: f"bad database URL: {_first_line(e)}"),
    "sqlalchemy.exc.ProgrammingError": (EXIT_INPUT, lambda e: f"database refused the request: {_db_reason(e)}"),
    "psycopg.OperationalError": (EXIT_INPUT, lambda e: f"cannot use the database: {_first_line(e)}"),
    "fleet.settings.SettingsError": (EXIT_INPUT, _first_line),
    "agent.config.ConfigError": (EXIT_INPUT, _first_line),
    "agent.keys.KeyFileError": (EXIT_INPUT, _first_line),
    "agent.bundle.BundleError": (EXIT_CHECK, lambda e: f"refused: {_first_line(e)}"),
    "agent.bundle_build.BundleError": (EXIT_CHECK, lambda e: f"refused: {_first_line(e)}"),
    "compiler.errors.CompileInputError": (EXIT_INPUT, _first_line),
    # json and tomllib recurse per nesting level: a hostile file ends here, and is refused.
    "builtins.RecursionError": (EXIT_INPUT, lambda e: "refused: the input is nested too deeply to read"),
    "builtins.MemoryError": (EXIT_INPUT, lambda e: "refused: the input is too large to read"),
    "builtins.OSError": (EXIT_INPUT, _os_error),
}


def explain(exc: BaseException) -> tuple[int, str]:
    """(exit code, one line) for an exception that escaped a command."""
    for cls in type(exc).__mro__:
        known = KNOWN.get(f"{cls.__module__}.{cls.__qualname__}")
        if known:
            return known[0], known[1](exc)
    return EXIT_CHECK, (f"unexpected {type(exc).__name__}: {_first_line(exc)} "
                        "(run `edgefleet --debug ...` for the traceback)")


def run_guarded(command: click.Command, prog_name: str, args: Sequence[str] | None = None) -> Any:
    """`command.main` with the boundary around it: click's own usage errors keep their exit 2."""
    try:
        return command.main(args=list(args) if args is not None else None, prog_name=prog_name)
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as exc:
        if debugging():
            raise
        code, line = explain(exc)
        sys.stdout.flush()
        click.echo(f"error: {line}", err=True)
        raise SystemExit(code) from None
