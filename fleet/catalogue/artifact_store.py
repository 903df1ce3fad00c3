"""The fleet's artifact store, sealed at rest with the agent's sealing module (agent.sealed).

Each bundle is stored as artifacts/<bundle sha256>, sealed in 1 MiB segments with the fleet's
storage key and the digest as associated data (a file renamed to another digest does not open).
GET /artifacts/<sha> serves the plaintext through a seekable reader, so Range requests decrypt
only the segments they touch and agents receive the exact bytes they verify.

The key: `storage_key_file` (settings, or EDGEFLEET_STORAGE_KEY_FILE), else the systemd credential
`edgefleet-storage-key`, else data_dir/keys/storage.key (created 0600 on first use). Artifacts that
an older fleet stored in plaintext are sealed the first time they are served, after their bytes
are checked against their digest.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from flask import Response

from agent.canonical import file_sha256
from agent.private_files import private_dir
from agent.sealed import SealedFile, Sealer, SealError, is_sealed_file, load_storage_key
from fleet.settings import FleetSettings

log = logging.getLogger(__name__)

_sealers: dict[str, Sealer] = {}
_lock = threading.Lock()


class ArtifactUnreadable(Exception):
    """The stored artifact cannot be opened (wrong storage key, damaged, or not what its name says)."""


def storage_key_path(settings: FleetSettings) -> Path:
    return settings.data_dir / "keys" / "storage.key"


def storage_sealer(settings: FleetSettings) -> Sealer:
    """The fleet's storage key, loaded once per key file (created on first use)."""
    explicit = getattr(settings, "storage_key_file", None)
    cache_key = f"{explicit}|{storage_key_path(settings)}"
    with _lock:
        if cache_key not in _sealers:
            _sealers[cache_key] = load_storage_key(explicit, storage_key_path(settings))
        return _sealers[cache_key]


def _purpose(digest: str) -> bytes:
    return b"edgefleet/artifact\x00" + digest.encode()


def seal_into_store(settings: FleetSettings, digest: str, src: Path, dest: Path) -> Path:
    """Seal the verified upload `src` to `dest` (its content address) and remove `src`. Same
    bytes twice: the stored copy stays."""
    private_dir(dest.parent)
    try:
        if not dest.exists() or not is_sealed_file(dest):
            storage_sealer(settings).seal_file(src, dest, _purpose(digest))
    finally:
        Path(src).unlink(missing_ok=True)
    return dest


def open_artifact(settings: FleetSettings, digest: str, path: Path) -> SealedFile:
    """The artifact's plaintext as a seekable binary file (`.size` bytes); the caller closes it."""
    try:
        sealer = storage_sealer(settings)
        if not is_sealed_file(path):
            _seal_legacy(sealer, digest, path)
        return SealedFile(sealer, path, _purpose(digest))
    except SealError as exc:
        log.error("event=artifact-unreadable digest=%s reason=%s", digest, exc)
        raise ArtifactUnreadable(str(exc)) from None


def _seal_legacy(sealer: Sealer, digest: str, path: Path) -> None:
    if file_sha256(path) != digest:
        raise SealError(f"stored artifact {path.name} does not match its digest")
    sealer.seal_file(path, path, _purpose(digest))
    log.info("event=artifact-sealed-legacy digest=%s", digest)


def send_artifact(f: SealedFile, digest: str, mtime: float, max_age: int = 31536000) -> Response:
    """A streamed, conditional (ETag, Range) response of the plaintext. Flask's send_file cannot
    take the length of a file object, so ranges would not be offered; this gives it."""
    from flask import current_app, request
    from werkzeug.exceptions import RequestedRangeNotSatisfiable
    from werkzeug.wsgi import wrap_file

    rv = current_app.response_class(wrap_file(request.environ, f), mimetype="application/x-tar",
                                    direct_passthrough=True)
    rv.content_length = f.size
    rv.headers.set("Content-Disposition", "inline", filename=f"{digest}.bundle")
    rv.last_modified = mtime  # type: ignore[assignment]
    rv.set_etag(digest)
    rv.cache_control.public = True
    rv.cache_control.max_age = max_age
    try:
        return rv.make_conditional(request.environ, accept_ranges=True, complete_length=f.size)
    except RequestedRangeNotSatisfiable:
        f.close()
        raise
