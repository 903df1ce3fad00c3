"""Private state on disk: directories 0700, files 0600, on the agent and on the fleet.

Why: a state dir holds telemetry, keys and credentials; other local users must not read them even
when the process runs with a permissive umask. Files written whole go through
`agent.model_store.write_atomic` (which creates them 0600); files other libraries create (SQLite
databases) are created empty here first with 0600, because SQLite gives its -wal and -shm files the
mode of the database file.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path | str) -> Path:
    """Create `path` (and missing parents) and make `path` itself 0700; existing dirs are tightened."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    _tighten(p, DIR_MODE)
    return p


def private_file(path: Path | str) -> Path:
    """Make sure `path` exists with mode 0600 (created empty when absent, tightened when wider)."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        _tighten(p, FILE_MODE)
    else:
        os.close(fd)
    return p


def _tighten(p: Path, mode: int) -> None:
    current = stat.S_IMODE(p.stat().st_mode)
    if current & ~mode & 0o777:
        try:
            os.chmod(p, current & mode)
        except PermissionError as exc:  # not ours (a shared mount): usable, but say so once
            log.warning("event=permissions-too-open path=%s mode=%o reason=%s", p, current, exc.strerror)
            return
        log.info("event=permissions-tightened path=%s from=%o to=%o", p, current, current & mode)
