"""Encryption at rest: AES-256-GCM under one storage key, for the agent and the fleet.

What is sealed: the agent's outbox rows (telemetry, raw samples, events), secrets in agent.toml
(`mqtt.password_sealed`), and the fleet's artifact store. Every sealed thing carries a versioned
header, so plaintext written by older versions is recognised (and migrated by its owner), and the
purpose it was sealed for (associated data): a sealed MQTT password cannot be replayed as an outbox
row, a row cannot move to another kind, an artifact cannot be swapped for another digest.

The storage key is 32 random bytes, read from (first that applies):
  1. an explicitly configured key file,
  2. a systemd credential `$CREDENTIALS_DIRECTORY/edgefleet-storage-key` (LoadCredential= or
     LoadCredentialEncrypted=, which can bind the key to the machine's TPM),
  3. the default key file next to the state, created 0600 on first use.
The file holds the key as base64 text (raw 32 bytes and 64 hex digits are accepted as well).

Formats (all integers big-endian):
  record  "EFS\\x01" | key id (8) | nonce (12) | ciphertext+tag        (AAD: header | purpose)
  text    "efs1:" + urlsafe base64 of a record                        (config values)
  file    "EFA\\x01" | key id (8) | segment size (4) | plaintext size (8) | salt (16) | nonce prefix (7)
          then segments of ciphertext+tag. Each file has its own HKDF-derived key; segment i uses
          nonce = prefix | i (4) | last flag (1) and AAD = header | purpose: the STREAM construction
          (as in Tink's streaming AEAD), so a reader decrypts any byte range without reading the
          rest, and truncation, reordering and splicing are detected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import os
import struct
import threading
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.private_files import FILE_MODE, private_dir, private_file

log = logging.getLogger(__name__)

CREDENTIAL = "edgefleet-storage-key"
KEY_BYTES = 32
RECORD_MAGIC = b"EFS\x01"
FILE_MAGIC = b"EFA\x01"
TEXT_PREFIX = "efs1:"
_KID = 8
_NONCE = 12
_TAG = 16
_RECORD_HEADER = len(RECORD_MAGIC) + _KID + _NONCE
_FILE_HEADER = struct.Struct(">4s8sIQ16s7s")
SEGMENT_BYTES = 1 << 20
MAX_SEGMENT_BYTES = 1 << 26


class SealError(Exception):
    """Sealed data cannot be opened (wrong key, tampered, truncated) or the key is unusable."""


class WrongKeyError(SealError):
    """Sealed under another storage key: restore that key rather than discard the data."""


def _key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"edgefleet storage key id\x00" + key).digest()[:_KID]


class Sealer:
    """AES-256-GCM with one storage key. `purpose` (associated data) says what a value is for."""

    def __init__(self, key: bytes, source: str = "memory") -> None:
        if len(key) != KEY_BYTES:
            raise SealError(f"storage key from {source} must be {KEY_BYTES} bytes, got {len(key)}")
        self._key = key
        self._aead = AESGCM(key)
        self.key_id = _key_id(key)
        self.source = source

    @property
    def key_id_hex(self) -> str:
        return self.key_id.hex()

    # -- records ----------------------------------------------------------------------------
    def seal(self, data: bytes, purpose: bytes) -> bytes:
        header = RECORD_MAGIC + self.key_id + os.urandom(_NONCE)
        return header + self._aead.encrypt(header[-_NONCE:], data, header + purpose)

    def open(self, blob: bytes, purpose: bytes, what: str = "record") -> bytes:
        blob = bytes(blob)
        if not is_sealed(blob):
            raise SealError(f"{what} is not sealed")
        if len(blob) < _RECORD_HEADER + _TAG:
            raise SealError(f"{what} is truncated")
        self._check_kid(blob[4:4 + _KID], what)
        header = blob[:_RECORD_HEADER]
        try:
            return self._aead.decrypt(header[-_NONCE:], blob[_RECORD_HEADER:], header + purpose)
        except InvalidTag:
            raise SealError(f"{what} fails authentication (tampered, or sealed for another purpose)") from None

    def _check_kid(self, kid: bytes, what: str) -> None:
        if kid != self.key_id:
            raise WrongKeyError(f"{what} was sealed with storage key {kid.hex()}, but the key from {self.source} "
                                f"is {self.key_id_hex}: restore the original storage key")

    def seal_text(self, text: str, purpose: bytes) -> str:
        return TEXT_PREFIX + base64.urlsafe_b64encode(self.seal(text.encode(), purpose)).decode()

    def open_text(self, value: str, purpose: bytes, what: str = "value") -> str:
        if not value.startswith(TEXT_PREFIX):
            raise SealError(f"{what} does not start with {TEXT_PREFIX!r}")
        try:
            blob = base64.urlsafe_b64decode(value[len(TEXT_PREFIX):].encode())
        except (binascii.Error, ValueError):
            raise SealError(f"{what} is not valid base64") from None
        try:
            return self.open(blob, purpose, what).decode()
        except UnicodeDecodeError:
            raise SealError(f"{what} is not text") from None

    # -- files ------------------------------------------------------------------------------
    def _file_aead(self, salt: bytes, purpose: bytes) -> AESGCM:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=b"edgefleet file\x00" + purpose)
        return AESGCM(hkdf.derive(self._key))

    def seal_file(self, src: Path, dst: Path, purpose: bytes, segment: int = SEGMENT_BYTES) -> int:
        """Write `src` sealed to `dst` (0600, replaced atomically). Returns the plaintext size."""
        src, dst = Path(src), Path(dst)
        size = src.stat().st_size
        header = _FILE_HEADER.pack(FILE_MAGIC, self.key_id, segment, size, os.urandom(16), os.urandom(7))
        aead = self._file_aead(header[24:40], purpose)
        aad = header + purpose
        prefix = header[40:]
        n = _segments(size, segment)
        tmp = dst.with_name(f".{dst.name}.sealing-{os.getpid()}-{threading.get_ident()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as fh:
                out.write(header)
                for i in range(n):
                    chunk = fh.read(segment)
                    if len(chunk) != (size - i * segment if i == n - 1 else segment):
                        raise SealError(f"{src} changed while it was sealed")
                    out.write(aead.encrypt(prefix + struct.pack(">IB", i, i == n - 1), chunk, aad))
                if fh.read(1):
                    raise SealError(f"{src} grew while it was sealed")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dst)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return size

    def open_file(self, path: Path, purpose: bytes) -> SealedFile:
        return SealedFile(self, Path(path), purpose)


def _segments(size: int, segment: int) -> int:
    return max(1, -(-size // segment))


def is_sealed(blob: bytes | memoryview) -> bool:
    return bytes(blob[:4]) == RECORD_MAGIC


def is_sealed_file(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == FILE_MAGIC


class SealedFile(io.RawIOBase):
    """A sealed file read as its plaintext: seekable, decrypting only the segments a read touches
    (so HTTP Range requests on a large artifact stay cheap)."""

    def __init__(self, sealer: Sealer, path: Path, purpose: bytes) -> None:
        super().__init__()
        self._fh = open(path, "rb")  # noqa: SIM115 - closed in close()
        try:
            header = self._fh.read(_FILE_HEADER.size)
            if len(header) < _FILE_HEADER.size or header[:4] != FILE_MAGIC:
                raise SealError(f"{path} is not a sealed file")
            _, kid, self._seg, self.size, salt, self._prefix = _FILE_HEADER.unpack(header)
            sealer._check_kid(kid, str(path))
            if not 1 <= self._seg <= MAX_SEGMENT_BYTES:  # bounded: a read never holds more than this
                raise SealError(f"{path} has a bad segment size {self._seg}")
            self._n = _segments(self.size, self._seg)
            expected = _FILE_HEADER.size + self.size + self._n * _TAG
            actual = os.fstat(self._fh.fileno()).st_size
            if actual != expected:
                raise SealError(f"{path} is {actual} bytes, its header says {expected}: truncated or extended")
        except BaseException:
            self._fh.close()
            raise
        self._aead = sealer._file_aead(salt, purpose)
        self._aad = header + purpose
        self._path = path
        self._pos = 0
        self._cache: tuple[int, bytes] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _segment(self, i: int) -> bytes:
        if self._cache is not None and self._cache[0] == i:
            return self._cache[1]
        self._fh.seek(_FILE_HEADER.size + i * (self._seg + _TAG))
        length = (self.size - i * self._seg if i == self._n - 1 else self._seg) + _TAG
        blob = self._fh.read(length)
        try:
            plain = self._aead.decrypt(self._prefix + struct.pack(">IB", i, i == self._n - 1), blob, self._aad)
        except InvalidTag:
            raise SealError(f"{self._path} segment {i} fails authentication (tampered or wrong purpose)") from None
        self._cache = (i, plain)
        return plain

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        done = 0
        while done < len(buf) and self._pos < self.size:
            i, off = divmod(self._pos, self._seg)
            plain = self._segment(i)
            n = min(len(buf) - done, len(plain) - off)
            buf[done:done + n] = plain[off:off + n]
            self._pos += n
            done += n
        return done

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
        super().close()


# -- the storage key ------------------------------------------------------------------------
def _parse_key(raw: bytes, source: str) -> bytes:
    if len(raw) == KEY_BYTES:
        return raw
    text = raw.strip()
    decoders = (lambda t: base64.b64decode(t, validate=True), base64.urlsafe_b64decode,
                lambda t: bytes.fromhex(t.decode()))
    for decode in decoders:
        try:
            key = decode(text)
        except (binascii.Error, ValueError, UnicodeDecodeError):
            continue
        if len(key) == KEY_BYTES:
            return key
    raise SealError(f"storage key {source} must hold {KEY_BYTES} bytes (raw, base64 or hex)")


def load_storage_key(path: Path | str | None, default: Path | str, *, create: bool = True,
                     environ: Mapping[str, str] | None = None) -> Sealer:
    """The storage key as a Sealer: `path` when configured, else the systemd credential, else
    `default` (created 0600 on first use when `create`)."""
    env = os.environ if environ is None else environ
    if path is None or str(path) == "":
        cred_dir = env.get("CREDENTIALS_DIRECTORY")
        cred = Path(cred_dir) / CREDENTIAL if cred_dir else None
        if cred is not None and cred.is_file():
            return Sealer(_parse_key(cred.read_bytes(), f"credential {cred}"), f"credential {cred}")
        path = default
    p = Path(path)
    if not p.exists():
        if not create:
            raise SealError(f"storage key {p} does not exist")
        _create_key(p)
    elif p.is_file():
        try:
            private_file(p)
        except OSError as exc:  # not ours to chmod: still usable, but say so
            log.warning("event=storage-key-permissions path=%s reason=%s", p, exc)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise SealError(f"cannot read storage key {p}: {exc.strerror or exc}") from None
    return Sealer(_parse_key(raw, str(p)), str(p))


def _create_key(p: Path) -> None:
    """Write a fresh key to a temporary file, then link it into place: a concurrent first start
    either wins or reads the complete key of the process that did, never a half-written one."""
    if not p.parent.exists():
        private_dir(p.parent)
    tmp = p.with_name(f".{p.name}.new-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(base64.b64encode(os.urandom(KEY_BYTES)) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, p)
        log.info("event=storage-key-created path=%s", p)
    except FileExistsError:
        pass
    except OSError as exc:
        raise SealError(f"cannot create storage key {p}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
