"""Bundle format and building: the canonical tar layout (fixed member order, headers and
padding), refusal reasons, member path rules and the signed build. agent.bundle verifies.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.canonical import canonical_json, sha256_hex
from agent.keys import sign_payload
from agent.manifest_check import SCHEMA, ManifestRefused, check_manifest

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "signature.json"
PAYLOAD_DIR = "payload"
DEFAULT_MAX_MEMBER_BYTES = 2 * 1024**3
MAX_METADATA_BYTES = 16 * 1024**2
_CHUNK = 1 << 20

REASONS = (
    "no-signature",
    "unknown-key",
    "bad-signature",
    "hash-mismatch",
    "size-mismatch",
    "extra-file",
    "missing-file",
    "unsafe-path",
    "too-large",
    "downgrade",
    "malformed",
    "bad-name",
    "bad-tensor-spec",
    "wrong-device-class",
    "format-mismatch",
    "no-space",
)


class BundleError(Exception):
    """A bundle was refused. `reason` is one of REASONS; the message says what and where."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class VerifiedBundle:
    manifest: dict[str, Any]
    key_id: str
    bundle_sha256: str
    manifest_sha256: str
    path: Path | None = None  # folder holding the unpacked files, when unpacked

    @property
    def name(self) -> str:
        return self.manifest["model"]["name"]

    @property
    def version(self) -> int:
        return int(self.manifest["model"]["version"])

    @property
    def entrypoint(self) -> str:
        return self.manifest["entrypoint"]


# --------------------------------------------------------------------------------------------
# Building


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def safe_member_path(path: str) -> str:
    """Refuse absolute paths, '..', backslashes, empty parts and odd characters."""
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        raise BundleError("unsafe-path", f"path {path!r} is absolute or has forbidden characters")
    parts = PurePosixPath(path).parts
    if any(p in ("", ".", "..") for p in parts) or str(PurePosixPath(*parts)) != path:
        raise BundleError("unsafe-path", f"path {path!r} escapes the bundle or is not normalised")
    if len(path.encode()) > 90:
        raise BundleError("unsafe-path", f"path {path!r} is longer than 90 bytes")
    return path


def file_entry(rel: str, src: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    size = 0
    with open(src, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return {"path": rel, "sha256": h.hexdigest(), "size": size}


def validate_manifest(manifest: Mapping[str, Any]) -> None:
    """Structural checks shared by build and verify (agent.manifest_check holds the rules)."""
    try:
        check_manifest(manifest, safe_member_path)
    except ManifestRefused as exc:
        raise BundleError(exc.reason, f"manifest is invalid: {exc}") from None


def build_bundle(
    out_path: Path,
    files: Mapping[str, Path],
    manifest_fields: Mapping[str, Any],
    signing_key: Ed25519PrivateKey,
) -> VerifiedBundle:
    """Write a signed bundle; byte-identical for identical inputs.

    `files` maps a path inside the bundle (e.g. "model.onnx") to a file on disk.
    `manifest_fields` holds everything but "schema" and "files": model {name, version,
    device_class, format, precision}, entrypoint, inputs, outputs, metrics, provenance,
    drift_baseline.
    """
    entries = [file_entry(safe_member_path(rel), Path(src)) for rel, src in sorted(files.items())]
    manifest = {**dict(manifest_fields), "schema": SCHEMA, "files": entries}
    validate_manifest(manifest)
    manifest_bytes = canonical_json(manifest)
    signature = {"signatures": [sign_payload(manifest, signing_key)]}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as raw:
        _write_canonical_tar(raw, manifest_bytes, canonical_json(signature), entries, files)
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, out_path)
    digest = file_entry("x", out_path)["sha256"]
    return VerifiedBundle(manifest, signature["signatures"][0]["key_id"], digest, sha256_hex(manifest_bytes))


def _write_canonical_tar(
    raw: IO[bytes],
    manifest_bytes: bytes,
    signature_bytes: bytes,
    entries: list[dict[str, Any]],
    sources: Mapping[str, Path] | Mapping[str, IO[bytes]],
) -> None:
    with tarfile.open(fileobj=raw, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(_tarinfo(MANIFEST_NAME, len(manifest_bytes)), io.BytesIO(manifest_bytes))
        tar.addfile(_tarinfo(SIGNATURE_NAME, len(signature_bytes)), io.BytesIO(signature_bytes))
        for entry in entries:
            src = sources[entry["path"]]
            info = _tarinfo(f"{PAYLOAD_DIR}/{entry['path']}", entry["size"])
            if isinstance(src, (str, Path)):
                with open(src, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info, src)


def canonical_bundle_digest(manifest_bytes: bytes, signature_bytes: bytes, payload_dir: Path,
                            entries: list[dict[str, Any]]) -> str:
    """SHA-256 of the canonical tar for these members, computed without writing it."""
    sink = _HashSink()
    _write_canonical_tar(cast(IO[bytes], sink), manifest_bytes, signature_bytes, entries,
                         {e["path"]: payload_dir / e["path"] for e in entries})
    return sink.hexdigest()


class _HashSink(io.RawIOBase):
    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._h.update(b)
        return len(b)

    def hexdigest(self) -> str:
        return self._h.hexdigest()
