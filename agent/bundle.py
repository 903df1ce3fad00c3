"""The signed model bundle: one tar file with manifest.json, signature.json and payload/*.

The layout is canonical (fixed member order, headers and padding), so a verifier can insist on
byte-exact structure: any byte changed anywhere, padding included, is refused. Verification
streams through the file once, checks the signature before writing any payload byte, checks
every member's size before reading it and writes into a temporary folder that is renamed into
place only when everything matched.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.canonical import canonical_json, sha256_hex
from agent.keys import Keyring, SignatureError, sign_payload, verify_payload

SCHEMA = "edgefleet.bundle/v1"
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "signature.json"
PAYLOAD_DIR = "payload"
FORMATS = ("onnx", "openvino", "tflite")
PRECISIONS = ("fp32", "fp16", "int8", "mixed")
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
    """Structural checks shared by build and verify."""
    try:
        if manifest.get("schema") != SCHEMA:
            raise ValueError(f"schema must be {SCHEMA!r}")
        model = manifest["model"]
        if not isinstance(model.get("name"), str) or not model["name"]:
            raise ValueError("model.name must be a non-empty string")
        if not isinstance(model.get("version"), int) or isinstance(model["version"], bool) or model["version"] < 0:
            raise ValueError("model.version must be a non-negative integer")
        if model.get("format") not in FORMATS:
            raise ValueError(f"model.format must be one of {FORMATS}")
        if model.get("precision") not in PRECISIONS:
            raise ValueError(f"model.precision must be one of {PRECISIONS}")
        if not isinstance(model.get("device_class"), str):
            raise ValueError("model.device_class must be a string")
        files = manifest["files"]
        if not isinstance(files, list) or not files:
            raise ValueError("files must be a non-empty list")
        seen = set()
        for entry in files:
            safe_member_path(entry["path"])
            if entry["path"] in seen:
                raise ValueError(f"file {entry['path']!r} listed twice")
            seen.add(entry["path"])
            if not isinstance(entry["size"], int) or entry["size"] < 0:
                raise ValueError(f"file {entry['path']!r} has a bad size")
            if not isinstance(entry["sha256"], str) or len(entry["sha256"]) != 64:
                raise ValueError(f"file {entry['path']!r} has a bad sha256")
        if manifest.get("entrypoint") not in seen:
            raise ValueError("entrypoint must name one of the files")
        for key in ("inputs", "outputs"):
            if not isinstance(manifest.get(key), list):
                raise ValueError(f"{key} must be a list of tensor specs")
    except BundleError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError("malformed", f"manifest is invalid: {exc}") from exc


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
    _write_canonical_tar(sink, manifest_bytes, signature_bytes, entries,
                         {e["path"]: payload_dir / e["path"] for e in entries})
    return sink.hexdigest()


class _HashSink(io.RawIOBase):
    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:  # type: ignore[override]
        self._h.update(b)
        return len(b)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


# --------------------------------------------------------------------------------------------
# Verifying


@dataclass(frozen=True)
class RollbackApproval:
    """A fleet-signed permission to install an older version (the only way past anti-rollback)."""

    document: Mapping[str, Any]

    def check(self, keyring: Keyring, manifest: Mapping[str, Any], manifest_sha256: str) -> None:
        payload = self.document.get("payload") if isinstance(self.document, Mapping) else None
        if not isinstance(payload, Mapping):
            raise BundleError("downgrade", "rollback approval is malformed")
        try:
            verify_payload(dict(payload), self.document.get("signature"), keyring)
        except SignatureError as exc:
            raise BundleError("downgrade", f"rollback approval not trusted ({exc})") from exc
        model = manifest["model"]
        if (
            payload.get("kind") != "rollback-approval"
            or payload.get("model") != model["name"]
            or payload.get("version") != model["version"]
            or payload.get("manifest_sha256") != manifest_sha256
        ):
            raise BundleError("downgrade", "rollback approval is for another model, version or bundle")


def make_rollback_approval(key: Ed25519PrivateKey, model: str, version: int, manifest_sha256: str) -> RollbackApproval:
    payload = {"kind": "rollback-approval", "model": model, "version": version, "manifest_sha256": manifest_sha256}
    return RollbackApproval({"payload": payload, "signature": sign_payload(payload, key)})


def _read_exact(fh: IO[bytes], n: int) -> bytes:
    data = fh.read(n)
    if data is None or len(data) != n:
        raise BundleError("malformed", "member is truncated")
    return data


def _check_member(info: tarfile.TarInfo, max_bytes: int) -> None:
    if not info.isreg():
        kind = "link" if (info.issym() or info.islnk()) else "device/dir/special file"
        raise BundleError("unsafe-path", f"member {info.name!r} is a {kind}, only regular files are allowed")
    safe_member_path(info.name)
    if info.size > max_bytes:
        raise BundleError("too-large", f"member {info.name!r} is {info.size} bytes, limit {max_bytes}")


def verify_bundle(
    bundle_path: Path,
    keyring: Keyring,
    *,
    installed_version: int | None = None,
    rollback_approval: RollbackApproval | None = None,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    unpack_to: Path | None = None,
) -> VerifiedBundle:
    """Verify a bundle; with `unpack_to`, atomically create that folder with its payload.

    Raises BundleError naming the reason. Nothing exists at `unpack_to` unless all checks passed.
    """
    bundle_path = Path(bundle_path)
    try:
        total = bundle_path.stat().st_size
    except OSError as exc:
        raise BundleError("malformed", f"cannot read {bundle_path}: {exc}") from exc
    if total > max_member_bytes + MAX_METADATA_BYTES:
        raise BundleError("too-large", f"bundle is {total} bytes, limit {max_member_bytes + MAX_METADATA_BYTES}")
    staging: Path | None
    if unpack_to is not None:
        unpack_to = Path(unpack_to)
        if unpack_to.exists():
            raise BundleError("malformed", f"destination {unpack_to} already exists")
        unpack_to.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{unpack_to.name}.staging-", dir=unpack_to.parent))
    else:
        staging = Path(tempfile.mkdtemp(prefix="edgefleet-verify-"))
    try:
        result = _verify_stream(bundle_path, keyring, installed_version, rollback_approval,
                                max_member_bytes, staging)
        if unpack_to is not None:
            _fsync_dir(staging)
            os.rename(staging, unpack_to)
            _fsync_dir(unpack_to.parent)
            staging = None
            return VerifiedBundle(result.manifest, result.key_id, result.bundle_sha256,
                                  result.manifest_sha256, unpack_to)
        return result
    except BundleError:
        raise
    except (tarfile.TarError, EOFError, OSError, UnicodeError, ValueError, KeyError, TypeError) as exc:
        raise BundleError("malformed", f"bundle cannot be parsed: {exc}") from exc
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _verify_stream(
    bundle_path: Path,
    keyring: Keyring,
    installed_version: int | None,
    rollback_approval: RollbackApproval | None,
    max_member_bytes: int,
    staging: Path,
) -> VerifiedBundle:
    import json

    file_hash = hashlib.sha256()

    class _Tee(io.RawIOBase):
        def __init__(self, fh: IO[bytes]) -> None:
            self._fh = fh

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:  # type: ignore[override]
            n = self._fh.readinto(b)  # type: ignore[attr-defined]
            if n:
                file_hash.update(memoryview(b)[:n])
            return n or 0

    with open(bundle_path, "rb") as raw, io.BufferedReader(_Tee(raw)) as buf, \
            tarfile.open(fileobj=buf, mode="r|") as tar:
        members = iter(tar)
        meta: dict[str, bytes] = {}
        for expected in (MANIFEST_NAME, SIGNATURE_NAME):
            info = next(members, None)
            if info is None:
                reason = "no-signature" if expected == SIGNATURE_NAME else "malformed"
                raise BundleError(reason, f"bundle ends before {expected}")
            _check_member(info, MAX_METADATA_BYTES)
            if info.name != expected:
                if expected == SIGNATURE_NAME and info.name.startswith(PAYLOAD_DIR + "/"):
                    raise BundleError("no-signature", "bundle has no signature.json")
                raise BundleError("malformed", f"expected {expected} but found {info.name!r}")
            fh = tar.extractfile(info)
            assert fh is not None
            meta[expected] = _read_exact(fh, info.size)
        manifest = json.loads(meta[MANIFEST_NAME])
        if not isinstance(manifest, dict) or canonical_json(manifest) != meta[MANIFEST_NAME]:
            raise BundleError("malformed", "manifest.json is not canonical JSON")
        sig_doc = json.loads(meta[SIGNATURE_NAME])
        if not isinstance(sig_doc, dict) or canonical_json(sig_doc) != meta[SIGNATURE_NAME]:
            raise BundleError("malformed", "signature.json is not canonical JSON")
        signatures = sig_doc.get("signatures")
        if not isinstance(signatures, list) or not signatures:
            raise BundleError("no-signature", "signature.json holds no signature")
        kid = _verify_any(manifest, signatures, keyring)
        validate_manifest(manifest)
        manifest_sha = sha256_hex(meta[MANIFEST_NAME])
        if installed_version is not None and manifest["model"]["version"] < installed_version:
            if rollback_approval is None:
                raise BundleError(
                    "downgrade",
                    f"version {manifest['model']['version']} is lower than installed {installed_version}"
                    " and no fleet-signed rollback approves it",
                )
            rollback_approval.check(keyring, manifest, manifest_sha)
        expected_files = {e["path"]: e for e in manifest["files"]}
        seen: set[str] = set()
        for info in members:
            _check_member(info, max_member_bytes)
            if not info.name.startswith(PAYLOAD_DIR + "/"):
                raise BundleError("extra-file", f"member {info.name!r} is outside {PAYLOAD_DIR}/")
            rel = info.name[len(PAYLOAD_DIR) + 1:]
            entry = expected_files.get(rel)
            if entry is None:
                raise BundleError("extra-file", f"member {rel!r} is not listed in the manifest")
            if rel in seen:
                raise BundleError("extra-file", f"member {rel!r} appears twice")
            seen.add(rel)
            if info.size != entry["size"]:
                raise BundleError("size-mismatch", f"{rel}: {info.size} bytes, manifest says {entry['size']}")
            _copy_and_check(tar.extractfile(info), entry, staging)
        missing = sorted(set(expected_files) - seen)
        if missing:
            raise BundleError("missing-file", f"listed in the manifest but absent: {', '.join(missing)}")
        # Drain the rest of the archive (end blocks and padding) into the hash.
        while buf.read(_CHUNK):
            pass
    digest = file_hash.hexdigest()
    expected_digest = canonical_bundle_digest(meta[MANIFEST_NAME], meta[SIGNATURE_NAME], staging,
                                              [expected_files[p] for p in sorted(expected_files)])
    if digest != expected_digest:
        raise BundleError("malformed", "bundle layout is not canonical (padding, headers or order changed)")
    return VerifiedBundle(manifest, kid, digest, manifest_sha)


def _verify_any(manifest: dict[str, Any], signatures: list[Any], keyring: Keyring) -> str:
    last: SignatureError | None = None
    for sig in signatures:
        try:
            return verify_payload(manifest, sig if isinstance(sig, dict) else None, keyring)
        except SignatureError as exc:
            last = exc
    assert last is not None
    # An unknown key only matters if no trusted key signed; report the most telling reason.
    raise BundleError(last.reason if last.reason in REASONS else "bad-signature", str(last))


def _copy_and_check(fh: IO[bytes] | None, entry: dict[str, Any], staging: Path) -> None:
    if fh is None:
        raise BundleError("malformed", f"member {entry['path']!r} cannot be read")
    h = hashlib.sha256()
    size = 0
    target = staging / entry["path"]
    target.parent.mkdir(parents=True, exist_ok=True)
    out = open(target, "wb")
    try:
        while chunk := fh.read(_CHUNK):
            size += len(chunk)
            if size > entry["size"]:
                raise BundleError("size-mismatch", f"{entry['path']} is longer than the manifest says")
            h.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    finally:
        out.close()
    if size != entry["size"]:
        raise BundleError("size-mismatch", f"{entry['path']}: {size} bytes, manifest says {entry['size']}")
    if h.hexdigest() != entry["sha256"]:
        raise BundleError("hash-mismatch", f"{entry['path']}: SHA-256 differs from the manifest")


def read_manifest_unverified(bundle_path: Path) -> dict[str, Any]:
    """For `bundle inspect` only: the manifest as written, trusting nothing."""
    import json

    try:
        with tarfile.open(bundle_path, mode="r|") as tar:
            for info in tar:
                if info.name == MANIFEST_NAME and info.isreg() and info.size <= MAX_METADATA_BYTES:
                    fh = tar.extractfile(info)
                    assert fh is not None
                    return json.loads(fh.read())
    except (tarfile.TarError, OSError, ValueError) as exc:
        raise BundleError("malformed", f"cannot read {bundle_path}: {exc}") from exc
    raise BundleError("malformed", f"{bundle_path} has no manifest.json")
