"""Decoding device messages: orjson when installed (the `fleet` extra), the stdlib otherwise.

Results are those of the stdlib: whatever orjson refuses (NaN, UTF-16 input, lone surrogates ...)
is handed to the stdlib, which decides as it always did, and so is any text with a number of 19
or more digits (orjson would read an integer beyond 64 bits as a float; the stdlib keeps it exact).
"""

from __future__ import annotations

from typing import Any

from agent.protocol import MAX_MESSAGE_BYTES
from agent.protocol import decode as _std_decode

try:
    import orjson
except ImportError:  # pragma: no cover - the fleet extra installs it
    orjson = None  # type: ignore[assignment]


def _number_table() -> bytes:
    table = bytearray(b" " * 256)
    table[ord("0"):ord("9") + 1] = b"0" * 10
    for c in b":,[":
        table[c] = ord(":")  # what stands before a number in an object or array
    table[ord("-")] = ord("-")
    return bytes(table)


_NUMBERS = _number_table()
_WHITESPACE = b" \t\r\n"
# every integer of 18 digits or fewer fits in 64 bits; a number token follows ":", "," or "["
_LONG_NUMBERS = (b":" + b"0" * 19, b":-" + b"0" * 19)


def _long_number(raw: bytes) -> bool:
    """Whether the text may hold an integer orjson would read as a float (strings that merely
    look like one only cost a stdlib parse)."""
    t = raw.translate(_NUMBERS, _WHITESPACE)
    return _LONG_NUMBERS[0] in t or _LONG_NUMBERS[1] in t


def decode(raw: bytes) -> dict[str, Any]:
    """agent.protocol.decode (size limit, JSON object or ProtocolError), about four times faster."""
    if orjson is not None and len(raw) <= MAX_MESSAGE_BYTES and not _long_number(raw):
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _std_decode(raw)
        if isinstance(doc, dict):
            return doc
    return _std_decode(raw)
