"""Profile on real devices (issue 13 item 8): POST a candidate bundle, the fleet times it on an
online device of its class (signed `benchmark` command, fleet.catalogue.profiles); GET the answer."""

from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint, jsonify, request

from fleet.api import responses as r
from fleet.api import schemas as sc
from fleet.api.models import UPLOAD_CONTENT
from fleet.api.validation import api, query
from fleet.app import fleet_context
from fleet.catalogue import versions as catalogue
from fleet.errors import ApiError
from fleet.registry.auth import actor, require_role
from fleet.registry.fleet_keys import build_keyring

bp = Blueprint("api_profiles", __name__, url_prefix="/api/profiles")


class ProfileView(r.Open):
    id: str
    status: Literal["pending", "done", "failed", "expired"]
    device_id: str
    result: dict[str, Any] | None = None
    reason: str | None = None


def _guard(fn: Any, *args: Any) -> Any:
    from fleet.catalogue.profiles import ProfileError

    try:
        return fn(*args)
    except ProfileError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from exc


@bp.post("")
@require_role("operator")
@api(query=sc.ProfileQuery, body_content=UPLOAD_CONTENT, responses={202: ProfileView})
def submit():  # type: ignore[no-untyped-def]
    """Time a candidate bundle (signed by a build key) on an online device of its class.

    The device installs nothing: it verifies, runs `warmup` + `runs` batch-1 inferences on
    synthetic inputs from the bundle's input specs, deletes it and reports p50/p99. 409
    no-device-online when no device of the class is online. Poll GET /api/profiles/<id>."""
    from fleet.catalogue.profiles import ProfileRequest
    from fleet.catalogue.profiles import submit as run
    from fleet.rollouts import api as rollouts_api

    ctx, q = fleet_context(), query()
    cap = ctx.settings.max_upload_bytes
    if request.content_length is not None and request.content_length > cap:
        raise ApiError(413, "too-large", f"candidate is {request.content_length} bytes; at most {cap} (max_upload_bytes)")
    request.max_content_length = cap
    stream = request.files["bundle"].stream if request.mimetype == "multipart/form-data" and \
        "bundle" in request.files else request.stream
    try:
        tmp = catalogue.store_upload(ctx.settings, stream, cap)
    except catalogue.CatalogueError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from exc
    if tmp.stat().st_size == 0:
        tmp.unlink()
        raise ApiError(400, "bad-request", "empty upload; send the candidate bundle as the body")
    req = ProfileRequest(q.fleet or ctx.settings.fleet_id, q.warmup, q.runs, q.device_id, q.ttl_s)
    with ctx.session() as db:
        out = _guard(run, db, ctx.settings, tmp, build_keyring(ctx.settings), rollouts_api._signer(db), req, actor())
    rollouts_api._publish()
    return jsonify(out), 202


@bp.get("/<profile_id>")
@require_role("viewer")
@api(responses={200: ProfileView})
def get_profile(profile_id: str):  # type: ignore[no-untyped-def]
    """A profile's state: pending, done (the device's p50_ms/p99_ms in `result`), failed or expired."""
    from fleet.catalogue.profiles import result

    if len(profile_id) > 128:
        raise ApiError(404, "not-found", "no such profile")
    with fleet_context().session() as db:
        return jsonify(_guard(result, db, profile_id))


class DiscardView(r.Open):
    id: str
    bundle_sha256: str
    artifact_deleted: bool


@bp.delete("/<profile_id>")
@require_role("operator")
@api(responses={200: DiscardView})
def discard_profile(profile_id: str):  # type: ignore[no-untyped-def]
    """Delete the profile's candidate bundle from the artifact store (kept if a catalogue version
    has the same bytes); the command and the device's answer stay."""
    from fleet.catalogue.profiles import discard

    if len(profile_id) > 128:
        raise ApiError(404, "not-found", "no such profile")
    ctx = fleet_context()
    with ctx.session() as db:
        return jsonify(_guard(discard, db, ctx.settings, profile_id, actor()))
