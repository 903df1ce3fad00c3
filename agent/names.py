"""One name grammar for everything that becomes part of a path, a topic or a key on a device:
model names, device ids and device classes.

Lower-case letters, digits, '.', '_' and '-', starting with a letter or digit, at most 63
characters, and no '..' anywhere. A name that passes cannot contain a path separator, cannot be
'.' or '..', and fits in any file name. `safe_join` is the one way the agent turns validated parts
into a path, and it refuses a result that is not under its root.
"""

from __future__ import annotations

import re
from pathlib import Path

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_NAME_RE = re.compile(NAME_PATTERN)
KINDS = ("model name", "device id", "device class")


class InvalidName(ValueError):
    """A name breaks the grammar; the message says which name, what kind and why."""


def validate_name(kind: str, value: object) -> str:
    """Return `value` unchanged when it is a valid `kind` name, else raise InvalidName."""
    if not isinstance(value, str):
        raise InvalidName(f"{kind} must be a string, got {type(value).__name__}")
    if not _NAME_RE.fullmatch(value) or ".." in value:
        shown = value if len(value) <= 80 else value[:77] + "..."
        why = f"is {len(value)} characters, at most 63" if len(value) > 63 else \
            "must be lower-case letters, digits, '.', '_', '-', start with a letter or digit, no '..'"
        raise InvalidName(f"{kind} {shown!r} {why}")
    return value


def is_valid_name(value: object) -> bool:
    return isinstance(value, str) and bool(_NAME_RE.fullmatch(value)) and ".." not in value


class UnsafePath(ValueError):
    """A path built from parts would leave its root."""


def safe_join(root: Path | str, *parts: str) -> Path:
    """`root/part/...`, refusing parts with separators, '.', '..', NUL, and any result outside root."""
    root_path = Path(root)
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\\" in part or "\x00" in part:
            raise UnsafePath(f"path part {part!r} is not a plain file name")
    out = root_path.joinpath(*parts)
    real_root = root_path.resolve()
    real = out.resolve()
    if real != real_root and real_root not in real.parents:
        raise UnsafePath(f"{out} is not under {root_path}")
    return out
