"""Artifact download for agents: GET /artifacts/<bundle sha256>, with Range (resumable) and ETag.

Public on purpose: the content is addressed by its hash and the bundle is signed, so an agent
verifies what it gets; no API token has to live on devices.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response

from fleet.api.validation import api
from fleet.app import fleet_context
from fleet.catalogue.artifact_store import ArtifactUnreadable, open_artifact, seal_into_store, send_artifact
from fleet.catalogue.versions import CatalogueError, artifact_path
from fleet.errors import ApiError
from fleet.settings import FleetSettings

bp = Blueprint("artifacts", __name__)


def store_artifact(settings: FleetSettings, digest: str, src: Path) -> Path:
    """The one write into the artifact store: seal the verified upload `src` (a temporary file in
    the artifacts dir) to its content address (fleet.catalogue.artifact_store). Same bytes twice: the first copy stays."""
    return seal_into_store(settings, digest, src, artifact_path(settings, digest))  # sealed at rest


_BUNDLE = {"content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}


@bp.route("/artifacts/<digest>", methods=["GET", "HEAD"])
@api(responses={200: _BUNDLE, 206: _BUNDLE, 304: {}})
def get_artifact(digest: str) -> Response:
    """A bundle by its SHA-256 (Range and If-None-Match supported). Public: agents verify it."""
    try:
        path = artifact_path(fleet_context().settings, digest)
    except CatalogueError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from exc
    if not path.is_file():
        raise ApiError(404, "not-found", f"no artifact {digest}")
    try:
        plain = open_artifact(fleet_context().settings, digest, path)
    except ArtifactUnreadable as exc:
        raise ApiError(503, "artifact-unreadable", str(exc)) from None
    resp = send_artifact(plain, digest, path.stat().st_mtime)
    resp.headers["Accept-Ranges"] = "bytes"
    resp.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    return resp
