"""The signed model bundle: one tar file with manifest.json, signature.json and payload/*.

The layout is canonical (fixed member order, headers and padding; agent.bundle_build writes it),
so a verifier can insist on byte-exact structure: any byte changed anywhere, padding included,
is refused. Verification streams through the file once with one bounded reader
(agent.tar_reader: every member is judged by its header before its body is read), checks the
signature and the manifest (names, tensor specs, device class) before writing any payload byte,
and writes into a temporary folder that is renamed into place only when everything matched.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle_build import (  # noqa: F401 (re-exported: agent.bundle is the public module)
    _CHUNK,
    DEFAULT_MAX_MEMBER_BYTES,
    MANIFEST_NAME,
    MAX_METADATA_BYTES,
    PAYLOAD_DIR,
    REASONS,
    SIGNATURE_NAME,
    BundleError,
    VerifiedBundle,
    build_bundle,
    canonical_bundle_digest,
    file_entry,
    safe_member_path,
    validate_manifest,
)
from agent.canonical import canonical_json, sha256_hex
from agent.keys import Keyring, SignatureError, sign_payload, verify_payload
from agent.manifest_check import (  # noqa: F401 (re-exported)
    FORMATS,
    PRECISIONS,
    SCHEMA,
    ManifestRefused,
    check_device_class,
    parse_json_bounded,
)
from agent.tar_reader import BoundedTar, Member, TarRefused

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


def verify_bundle(
    bundle_path: Path,
    keyring: Keyring,
    *,
    installed_version: int | None = None,
    rollback_approval: RollbackApproval | None = None,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    unpack_to: Path | None = None,
    device_class: str | None = None,
) -> VerifiedBundle:
    """Verify a bundle; with `unpack_to`, atomically create that folder with its payload.

    With `device_class`, a bundle built for another class is refused before any payload byte is
    read. Raises BundleError naming the reason. Nothing exists at `unpack_to` unless all checks
    passed.
    """
    bundle_path = Path(bundle_path)
    try:
        total = bundle_path.stat().st_size
    except OSError as exc:
        raise BundleError("malformed", f"cannot read {bundle_path}: {exc}") from exc
    if total > max_member_bytes + MAX_METADATA_BYTES:
        raise BundleError("too-large", f"bundle is {total} bytes, limit {max_member_bytes + MAX_METADATA_BYTES}")
    staging: Path | None
    try:
        if unpack_to is not None:
            unpack_to = Path(unpack_to)
            if unpack_to.exists():
                raise BundleError("malformed", f"destination {unpack_to} already exists")
            unpack_to.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{unpack_to.name}.staging-", dir=unpack_to.parent))
        else:
            staging = Path(tempfile.mkdtemp(prefix="edgefleet-verify-"))
    except OSError as exc:
        raise _os_refusal(exc) from exc
    try:
        result = _verify_stream(bundle_path, total, keyring, installed_version, rollback_approval,
                                max_member_bytes, staging, device_class)
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
    except TarRefused as exc:
        raise BundleError(exc.reason, str(exc)) from None
    except OSError as exc:
        raise _os_refusal(exc) from exc
    except (tarfile.TarError, EOFError, UnicodeError, ValueError, KeyError, TypeError) as exc:
        raise BundleError("malformed", f"bundle cannot be parsed: {exc}") from exc
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _os_refusal(exc: OSError) -> BundleError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return BundleError("no-space", f"the disk is full: {exc}")
    return BundleError("malformed", f"bundle cannot be read or unpacked: {exc}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _member_limit(max_member_bytes: int):  # type: ignore[no-untyped-def]
    def limit(name: str) -> int:
        return MAX_METADATA_BYTES if name in (MANIFEST_NAME, SIGNATURE_NAME) else max_member_bytes
    return limit


def _read_metadata(tar: BoundedTar, members: Any) -> tuple[bytes, bytes]:
    meta: dict[str, bytes] = {}
    for expected in (MANIFEST_NAME, SIGNATURE_NAME):
        info = next(members, None)
        if info is None:
            reason = "no-signature" if expected == SIGNATURE_NAME else "malformed"
            raise BundleError(reason, f"bundle ends before {expected}")
        safe_member_path(info.name)
        if info.name != expected:
            if expected == SIGNATURE_NAME and info.name.startswith(PAYLOAD_DIR + "/"):
                raise BundleError("no-signature", "bundle has no signature.json")
            raise BundleError("malformed", f"expected {expected} but found {info.name!r}")
        meta[expected] = tar.read_body()
    return meta[MANIFEST_NAME], meta[SIGNATURE_NAME]


def _parse_canonical(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = parse_json_bounded(data, what)
    except ManifestRefused as exc:
        raise BundleError(exc.reason, str(exc)) from None
    if not isinstance(doc, dict) or canonical_json(doc) != data:
        raise BundleError("malformed", f"{what} is not canonical JSON")
    return doc


def _verify_stream(
    bundle_path: Path,
    total: int,
    keyring: Keyring,
    installed_version: int | None,
    rollback_approval: RollbackApproval | None,
    max_member_bytes: int,
    staging: Path,
    device_class: str | None,
) -> VerifiedBundle:
    file_hash = hashlib.sha256()
    with open(bundle_path, "rb") as raw:
        tar = BoundedTar(raw, total, _member_limit(max_member_bytes), file_hash.update)
        members = iter(tar)
        manifest_bytes, signature_bytes = _read_metadata(tar, members)
        manifest = _parse_canonical(manifest_bytes, "manifest.json")
        sig_doc = _parse_canonical(signature_bytes, "signature.json")
        signatures = sig_doc.get("signatures")
        if not isinstance(signatures, list) or not signatures:
            raise BundleError("no-signature", "signature.json holds no signature")
        kid = _verify_any(manifest, signatures, keyring)
        validate_manifest(manifest)
        if device_class is not None:
            try:
                check_device_class(manifest, device_class)
            except ManifestRefused as exc:
                raise BundleError(exc.reason, str(exc)) from None
        manifest_sha = sha256_hex(manifest_bytes)
        _check_downgrade(manifest, manifest_sha, installed_version, rollback_approval, keyring)
        expected_files = {e["path"]: e for e in manifest["files"]}
        _unpack_members(tar, members, expected_files, staging)
        tar.drain()  # end blocks and padding go into the hash too
    digest = file_hash.hexdigest()
    expected_digest = canonical_bundle_digest(manifest_bytes, signature_bytes, staging,
                                              [expected_files[p] for p in sorted(expected_files)])
    if digest != expected_digest:
        raise BundleError("malformed", "bundle layout is not canonical (padding, headers or order changed)")
    return VerifiedBundle(manifest, kid, digest, manifest_sha)


def _check_downgrade(manifest: dict[str, Any], manifest_sha: str, installed_version: int | None,
                     rollback_approval: RollbackApproval | None, keyring: Keyring) -> None:
    """A version below the installed one needs a rollback approval that checks out."""
    if installed_version is None or manifest["model"]["version"] >= installed_version:
        return
    if rollback_approval is None:
        raise BundleError(
            "downgrade",
            f"version {manifest['model']['version']} is lower than installed {installed_version}"
            " and no fleet-signed rollback approves it",
        )
    rollback_approval.check(keyring, manifest, manifest_sha)


def _unpack_members(tar: BoundedTar, members: Iterator[Member], expected_files: dict[str, Any],
                    staging: Path) -> None:
    """Each payload member once, listed in the manifest with its size, copied and hash-checked."""
    seen: set[str] = set()
    for info in members:
        safe_member_path(info.name)
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
        _copy_and_check(tar, entry, staging)
    missing = sorted(set(expected_files) - seen)
    if missing:
        raise BundleError("missing-file", f"listed in the manifest but absent: {', '.join(missing)}")


def _verify_any(manifest: dict[str, Any], signatures: list[Any], keyring: Keyring) -> str:
    last: SignatureError | None = None
    for sig in signatures[:16]:
        try:
            return verify_payload(manifest, sig if isinstance(sig, dict) else None, keyring)
        except SignatureError as exc:
            last = exc
    assert last is not None
    # An unknown key only matters if no trusted key signed; report the most telling reason.
    raise BundleError(last.reason if last.reason in REASONS else "bad-signature", str(last))


def _copy_and_check(tar: BoundedTar, entry: dict[str, Any], staging: Path) -> None:
    h = hashlib.sha256()
    size = 0
    target = staging.joinpath(*entry["path"].split("/"))  # safe_member_path checked every part
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        for chunk in tar.body_chunks(_CHUNK):
            size += len(chunk)
            h.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if size != entry["size"]:
        raise BundleError("size-mismatch", f"{entry['path']}: {size} bytes, manifest says {entry['size']}")
    if h.hexdigest() != entry["sha256"]:
        raise BundleError("hash-mismatch", f"{entry['path']}: SHA-256 differs from the manifest")


def read_manifest_unverified(bundle_path: Path) -> dict[str, Any]:
    """For `bundle inspect` and install's pre-read only: the manifest as written, trusting nothing.

    Bounded: the manifest must be the first member, its declared size within MAX_METADATA_BYTES
    and within the file, its JSON within the depth limit; nothing past it is read.
    """
    bundle_path = Path(bundle_path)
    try:
        with open(bundle_path, "rb") as raw:
            tar = BoundedTar(raw, os.fstat(raw.fileno()).st_size, _member_limit(0), max_members=1)
            first = next(iter(tar), None)
            if first is None or first.name != MANIFEST_NAME:
                raise BundleError("malformed", f"{bundle_path} does not start with {MANIFEST_NAME}")
            doc = parse_json_bounded(tar.read_body(), "manifest.json")
    except TarRefused as exc:
        raise BundleError(exc.reason, f"{bundle_path}: {exc}") from None
    except ManifestRefused as exc:
        raise BundleError(exc.reason, f"{bundle_path}: {exc}") from None
    except OSError as exc:
        raise BundleError("malformed", f"cannot read {bundle_path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise BundleError("malformed", f"{bundle_path}: manifest.json is not a JSON object")
    return doc
