"""The one bounded reader for bundle files: a strict USTAR member reader that decides on every
member from its 512-byte header alone, before reading a byte of its body.

Why not `tarfile`: it reads pax and GNU long-name headers whole (a 300 MB pax header is read into
memory before anything can look at it) and, in stream mode, skips a member it is not asked to
read by reading and discarding its declared size, so a 10 KB file that declares 2^40 bytes spins
for minutes. Bundles are canonical USTAR with regular files only, so anything else (pax, GNU
extensions, links, devices, directories) is refused at its header. Limits: declared size per
member (checked against the caller's limit and against the bytes left in the file), member count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

BLOCK = 512
MAX_MEMBERS = 1024


class TarRefused(Exception):
    """A header breaks the rules; `reason` is a bundle refusal code (malformed, unsafe-path, too-large)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Member:
    name: str
    size: int


_TYPE_NAMES = {b"1": "hard link", b"2": "symbolic link", b"3": "character device", b"4": "block device",
               b"5": "directory", b"6": "FIFO", b"7": "contiguous file", b"x": "pax extended header",
               b"g": "pax global header", b"L": "GNU long name", b"K": "GNU long link name"}


def _octal(field: bytes, what: str) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256: only used for values octal cannot hold
        value = int.from_bytes(field[1:], "big")
        if field[0] == 0xFF:
            raise TarRefused("malformed", f"{what} is negative")
        return value
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if any(c not in b"01234567" for c in text):
        raise TarRefused("malformed", f"{what} is not an octal number")
    return int(text, 8)


def parse_header(block: bytes) -> Member:
    """One USTAR header -> Member, or TarRefused. Never reads anything else."""
    stored = _octal(block[148:156], "header checksum")
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    if stored != unsigned:
        raise TarRefused("malformed", "tar header checksum does not match")
    if block[257:263] != b"ustar\0" or block[263:265] != b"00":
        raise TarRefused("malformed", "member header is not POSIX ustar")
    try:
        name = block[0:100].split(b"\0", 1)[0].decode("utf-8")
        prefix = block[345:500].split(b"\0", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        raise TarRefused("unsafe-path", "member name is not UTF-8") from None
    if prefix:
        name = f"{prefix}/{name}"
    kind = block[156:157]
    if kind not in (b"0", b"\0"):
        what = _TYPE_NAMES.get(kind, f"type {kind!r} entry")
        reason = "malformed" if kind in (b"x", b"g", b"L", b"K") else "unsafe-path"
        raise TarRefused(reason, f"member {name!r} is a {what}; only regular files are allowed")
    return Member(name, _octal(block[124:136], f"size of {name!r}"))


class BoundedTar:
    """Iterate members of a tar stream; the caller reads each body with `read_body` or `body_chunks`.

    `limit_for(name)` gives the largest size allowed for a member (checked before its body is
    read); `remaining` is how many bytes the file holds, so a declared size past the end is
    refused as truncated without reading. Every byte read goes through `on_read` (hashing).
    """

    def __init__(self, fh: IO[bytes], remaining: int, limit_for: Callable[[str], int],
                 on_read: Callable[[bytes], None] | None = None, max_members: int = MAX_MEMBERS) -> None:
        self._fh = fh
        self._left = remaining
        self._limit_for = limit_for
        self._on_read = on_read
        self._max_members = max_members
        self._pending = 0  # body + padding bytes of the current member not consumed yet
        self._body_left = 0

    def _read(self, n: int) -> bytes:
        data = self._fh.read(n)
        if data is None or len(data) != n:
            raise TarRefused("malformed", "bundle is truncated")
        self._left -= n
        if self._on_read is not None:
            self._on_read(data)
        return data

    def __iter__(self) -> Iterator[Member]:
        count = 0
        while True:
            if self._pending:
                raise TarRefused("malformed", "member body was not consumed")  # caller bug: fail closed
            if self._left < BLOCK:
                raise TarRefused("malformed", "bundle ends without the end-of-archive marker")
            block = self._read(BLOCK)
            if block == bytes(BLOCK):
                return  # end of archive; the caller decides what may follow
            member = parse_header(block)
            count += 1
            if count > self._max_members:
                raise TarRefused("too-large", f"bundle has more than {self._max_members} members")
            limit = self._limit_for(member.name)
            if member.size > limit:
                raise TarRefused("too-large", f"member {member.name!r} is {member.size} bytes, limit {limit}")
            padded = -(-member.size // BLOCK) * BLOCK
            if padded > self._left:
                raise TarRefused("malformed", f"member {member.name!r} declares {member.size} bytes but the"
                                              f" file holds only {self._left} more")
            self._pending = padded
            self._body_left = member.size
            yield member

    def body_chunks(self, chunk: int = 1 << 20) -> Iterator[bytes]:
        """The current member's body in chunks, then its padding is consumed."""
        while self._body_left:
            n = min(chunk, self._body_left)
            data = self._read(n)
            self._body_left -= n
            self._pending -= n
            yield data
        if self._pending:
            pad = self._read(self._pending)
            self._pending = 0
            if pad.strip(b"\0"):
                raise TarRefused("malformed", "member padding is not zero")

    def read_body(self) -> bytes:
        return b"".join(self.body_chunks())

    def drain(self, chunk: int = 1 << 20) -> bytes:
        """Read what follows the end marker (zero padding), bounded by the file size; returns a sample."""
        tail = b""
        while self._left > 0:
            data = self._read(min(chunk, self._left))
            if data.strip(b"\0"):
                tail = data
        return tail
