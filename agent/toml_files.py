"""Read a TOML file with an error that names the file and what went wrong (config, catalogue)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any


def read_toml(path: Path | str, error: type[Exception], what: str = "config") -> dict[str, Any]:
    """Raise `error("<what> <path> ...")` for a missing, unreadable or malformed file."""
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} {path} is not valid TOML: {exc}") from None
