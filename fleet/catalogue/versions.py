"""Model catalogue: bundles verified against the trusted build keys on upload, stored
content-addressed on disk (artifacts/<bundle sha256>), versions per model, lineage from
manifest.provenance and metrics from the compiler's manifest."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sqlmodel import Session, select

from agent.bundle import BundleError, verify_bundle
from agent.keys import Keyring
from fleet import audit
from fleet.models import ModelVersion
from fleet.settings import FleetSettings

SHA256_LEN = 64


class CatalogueError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def artifact_path(settings: FleetSettings, bundle_sha256: str) -> Path:
    if len(bundle_sha256) != SHA256_LEN or any(c not in "0123456789abcdef" for c in bundle_sha256):
        raise CatalogueError(400, "bad-digest", "expected a lowercase hex SHA-256")
    return settings.artifacts_dir / bundle_sha256


@dataclass
class Uploaded:
    version: ModelVersion
    created: bool


def store_upload(settings: FleetSettings, stream: IO[bytes], limit: int | None = None) -> Path:
    """Stream an upload to a temporary file inside the artifacts dir (same filesystem for rename),
    1 MiB at a time, never more than `limit` bytes (CatalogueError 413 beyond, nothing left behind)."""
    limit = settings.max_upload_bytes if limit is None else limit
    settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=settings.artifacts_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            written = 0
            while chunk := stream.read(1 << 20):
                written += len(chunk)
                if written > limit:
                    raise CatalogueError(413, "too-large", f"bundle exceeds {limit} bytes (fleet max_upload_bytes)")
                out.write(chunk)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def check_model(model: dict[str, Any]) -> None:
    """The one name grammar (agent.names): a model name or class like `../../x` never reaches a
    path; the version fits its INTEGER column (32-bit on PostgreSQL)."""
    from agent.names import InvalidName, validate_name

    try:
        validate_name("model name", model.get("name"))
        validate_name("device class", model.get("device_class"))
    except InvalidName as exc:
        raise CatalogueError(400, "bad-name", str(exc)) from exc
    v = model.get("version")
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 2**31 - 1:
        raise CatalogueError(400, "bad-version", f"model.version must be an integer 0..{2**31 - 1}, got {v!r:.40}")


def verify_upload(bundle_file: Path, keyring: Keyring, error: type[CatalogueError] = CatalogueError) -> Any:
    """Verify an uploaded bundle against the build keys; refusals as HTTP errors (400 for a bad
    name, 422 for anything else the verifier refuses, 503 with no build key configured)."""
    if len(keyring) == 0:
        raise error(503, "no-trusted-keys", "no trusted build keys configured")
    try:
        return verify_bundle(bundle_file, keyring)
    except BundleError as exc:
        raise error(400 if exc.reason == "bad-name" else 422, f"bundle-{exc.reason}", str(exc)) from exc


def add_bundle(db: Session, settings: FleetSettings, bundle_file: Path, keyring: Keyring, actor: str) -> Uploaded:
    """Verify and register a bundle. Idempotent for the same bytes; 409 for a different bundle
    under an existing (name, version, device class). The file at `bundle_file` is consumed."""
    bundle_file = Path(bundle_file)
    try:
        vb = verify_upload(bundle_file, keyring)
        m = vb.manifest["model"]
        check_model(m)
        existing = db.exec(select(ModelVersion).where(ModelVersion.name == m["name"],
                                                      ModelVersion.version == m["version"],
                                                      ModelVersion.device_class == m["device_class"])).first()
        if existing is not None:
            if existing.bundle_sha256 == vb.bundle_sha256:
                return Uploaded(existing, False)
            raise CatalogueError(409, "version-exists",
                                 f"{m['name']} v{m['version']} for {m['device_class']} exists with other content")
        from fleet.catalogue.artifacts import store_artifact

        size = bundle_file.stat().st_size
        dest = store_artifact(settings, vb.bundle_sha256, bundle_file)
        mv = ModelVersion(name=m["name"], version=m["version"], device_class=m["device_class"], format=m["format"],
                          precision=m["precision"], manifest_sha256=vb.manifest_sha256,
                          bundle_sha256=vb.bundle_sha256, size=size, artifact_path=str(dest),
                          manifest=vb.manifest, signed_by=vb.key_id, uploaded_by=actor)
        db.add(mv)
        db.flush()
        audit.record(db, actor, "model.upload", f"model:{m['name']}:v{m['version']}:{m['device_class']}", None,
                     version_view(mv, with_manifest=False))
        return Uploaded(mv, True)
    finally:
        bundle_file.unlink(missing_ok=True)


def lineage(manifest: dict[str, Any]) -> dict[str, Any]:
    """Where a version came from, from the manifest: the compiler's pass chain
    (provenance.lineage: distill, export, quantize, evaluate ... with input/output hashes), the
    parent when one is named, the other provenance facts flattened for display, and metrics."""
    prov = manifest.get("provenance") or {}
    steps = [p for p in prov.get("lineage") or [] if isinstance(p, dict)]
    facts = []
    for key, value in prov.items():
        if key == "lineage":
            continue
        if isinstance(value, dict):
            facts += [(f"{key}.{k}", v) for k, v in value.items() if isinstance(v, (str, int, float, bool))]
        elif isinstance(value, (str, int, float, bool)):
            facts.append((key, value))
    return {"provenance": prov,
            "parent": prov.get("parent") or prov.get("parent_version") or prov.get("source_model"),
            "passes": [str(p.get("pass", "?")) for p in steps],
            "steps": steps,
            "facts": [{"key": k, "value": v} for k, v in facts],
            "metrics": manifest.get("metrics") or {}}


def version_view(mv: ModelVersion, *, with_manifest: bool = False, base_url: str = "") -> dict[str, Any]:
    from fleet.catalogue.explain_view import explain_summary

    d: dict[str, Any] = {
        "id": mv.id, "name": mv.name, "version": mv.version, "device_class": mv.device_class,
        "format": mv.format, "precision": mv.precision, "manifest_sha256": mv.manifest_sha256,
        "bundle_sha256": mv.bundle_sha256, "size": mv.size, "signed_by": mv.signed_by,
        "created_at": mv.created_at, "uploaded_by": mv.uploaded_by,
        "url": f"{base_url}/artifacts/{mv.bundle_sha256}",
        "metrics": (mv.manifest or {}).get("metrics") or {},
        "lineage": lineage(mv.manifest or {}),
        "has_drift_baseline": bool((mv.manifest or {}).get("drift_baseline")),
        "explain": explain_summary(mv.manifest),  # what the version relies on (issue 15)
    }
    if with_manifest:
        d["manifest"] = mv.manifest
    return d


def install_spec(mv: ModelVersion, base_url: str) -> dict[str, Any]:
    """The `model` object of an install/rollback/shadow command (docs/CONTRACTS.md)."""
    return {"name": mv.name, "version": mv.version, "manifest_sha256": mv.manifest_sha256,
            "bundle_sha256": mv.bundle_sha256, "size": mv.size, "url": f"{base_url}/artifacts/{mv.bundle_sha256}"}
