"""Model catalogue API: upload bundles, list models and versions, lineage, performance history."""

from __future__ import annotations

from collections import defaultdict

from flask import Blueprint, jsonify, request
from sqlmodel import select

from fleet import ops_metrics
from fleet.api import responses as r
from fleet.api import schemas as sc
from fleet.api.validation import api, query
from fleet.app import fleet_context
from fleet.catalogue import lifecycle
from fleet.catalogue import versions as catalogue
from fleet.errors import ApiError, page
from fleet.models import Aggregate, ModelVersion
from fleet.registry.auth import actor, require_role
from fleet.registry.fleet_keys import build_keyring

bp = Blueprint("api_models", __name__, url_prefix="/api/models")


_BINARY = {"schema": {"type": "string", "format": "binary"}}
UPLOAD_CONTENT = {"application/octet-stream": _BINARY,
                  "multipart/form-data": {"schema": {"type": "object", "required": ["bundle"],
                                                     "properties": {"bundle": {"type": "string", "format": "binary"}}}}}


@bp.post("")
@require_role("operator")
@api(body_content=UPLOAD_CONTENT, responses={201: r.VersionView, 200: r.VersionView})
def upload():  # type: ignore[no-untyped-def]
    """Upload a signed bundle: the raw bytes as the body, or a multipart file field named `bundle`.

    Any other Content-Type (or none, as `curl --data-binary @x.bundle` sends) is read as the raw
    bundle. The body is streamed to disk, at most the fleet's `max_upload_bytes` (413 beyond).
    201 for a new version, 200 when the same bytes are already registered."""
    ctx = fleet_context()
    cap = ctx.settings.max_upload_bytes
    if request.content_length is not None and request.content_length > cap:
        raise ApiError(413, "too-large", f"bundle is {request.content_length} bytes; this fleet accepts at most "
                                         f"{cap} (max_upload_bytes)")
    request.max_content_length = cap
    if request.mimetype == "multipart/form-data":
        f = request.files.get("bundle")
        if f is None:
            raise ApiError(400, "bad-request", "a multipart upload needs a file field named 'bundle'")
        stream = f.stream
    else:  # never touch request.form here: it would swallow an x-www-form-urlencoded bundle
        stream = request.stream
    try:
        tmp = catalogue.store_upload(ctx.settings, stream, cap)
    except catalogue.CatalogueError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from exc
    if tmp.stat().st_size == 0:
        tmp.unlink()
        raise ApiError(400, "bad-request", "empty upload; send the bundle as the body "
                                           "(curl --data-binary @x.bundle) or as multipart field 'bundle'")
    try:
        with ctx.session() as db:
            owner = _owner_check(db, ctx, tmp)  # issue 16: before anything is stored
            res = catalogue.add_bundle(db, ctx.settings, tmp, build_keyring(ctx.settings), actor())
            if res.created:
                lifecycle.owner_at_upload(db, res.version.name, owner, actor())
            view = catalogue.version_view(res.version, base_url=ctx.settings.public_url)
    except (catalogue.CatalogueError, lifecycle.LifecycleError) as exc:
        tmp.unlink(missing_ok=True)
        raise ApiError(exc.status, exc.code, exc.message) from exc
    return jsonify(view), 201 if res.created else 200


def _owner_check(db, ctx, tmp):  # type: ignore[no-untyped-def]
    """Owner query parameters (owner_team, owner_contact, oncall, review_interval_days) of a
    first upload; required for a new model when the fleet serves in production mode."""
    from agent.bundle import BundleError, read_manifest_unverified

    a = request.args
    days = a.get("review_interval_days")
    if days is not None and not days.isdigit():
        raise lifecycle.LifecycleError(400, "bad-owner", "review_interval_days must be a whole number of days")
    owner = lifecycle.OwnerFields(a.get("owner_team", ""), a.get("owner_contact", ""), a.get("oncall", ""),
                                  int(days) if days else None)
    try:
        name = read_manifest_unverified(tmp).get("model", {}).get("name")
    except (BundleError, AttributeError):
        name = None  # add_bundle refuses it with the precise reason
    if isinstance(name, str):
        required = bool(ctx.extras.get("production")) or ctx.settings.lifecycle.require_owner
        lifecycle.check_first_owner(db, name, owner, required)
    return owner


@bp.get("")
@require_role("viewer")
@api(responses={200: r.ModelList})
def index():  # type: ignore[no-untyped-def]
    with fleet_context().session() as db:
        by_name: dict[str, list[ModelVersion]] = defaultdict(list)
        for mv in db.exec(select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version)):
            by_name[mv.name].append(mv)
        items = [{"name": n, "versions": sorted({v.version for v in vs}),
                  "latest": max(v.version for v in vs), "device_classes": sorted({v.device_class for v in vs})}
                 for n, vs in sorted(by_name.items())]
        return jsonify({"items": items, "total": len(items)})


@bp.get("/<name>/versions")
@require_role("viewer")
@api(query=sc.PageQuery, responses={200: r.Page[r.VersionView]})
def versions(name: str):  # type: ignore[no-untyped-def]
    """A model's versions (one row per device-class build), newest first."""
    limit, offset = query().limit, query().offset
    ctx = fleet_context()
    with ctx.session() as db:
        rows = list(db.exec(select(ModelVersion).where(ModelVersion.name == name)
                            .order_by(ModelVersion.version.desc(), ModelVersion.device_class)))
        if not rows:
            raise ApiError(404, "not-found", f"no model {name!r}")
        items = [{**catalogue.version_view(r, base_url=ctx.settings.public_url),
                  "status": lifecycle.status_name(db, name, r.version)} for r in rows[offset:offset + limit]]
        return jsonify(page(items, len(rows), limit, offset))


@bp.get("/<name>/versions/<int:version>")
@require_role("viewer")
@api(query=sc.VersionQuery, responses={200: r.Items[r.VersionView]})
def version(name: str, version: int):  # type: ignore[no-untyped-def]
    """One version's builds with their manifests; `device_class` picks one build."""
    ctx = fleet_context()
    with ctx.session() as db:
        q = select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
        if query().device_class:
            q = q.where(ModelVersion.device_class == query().device_class)
        rows = list(db.exec(q))
        if not rows:
            raise ApiError(404, "not-found", f"no {name} v{version}")
        status = lifecycle.status_name(db, name, version)
        return jsonify({"items": [{**catalogue.version_view(r, with_manifest=True, base_url=ctx.settings.public_url),
                                   "status": status} for r in rows]})


@bp.get("/<name>/versions/<int:version>/performance")
@require_role("viewer")
@api(query=sc.PerformanceQuery, responses={200: r.Performance})
def performance(name: str, version: int):  # type: ignore[no-untyped-def]
    """History per window and cohort: requests, error rate, latency p50/p99, resources."""
    a = query()
    with fleet_context().session() as db:
        q = select(Aggregate).where(Aggregate.model_name == name, Aggregate.model_version == version)
        if a.role:
            q = q.where(Aggregate.role == a.role)
        if a.cohort:
            q = q.where(Aggregate.cohort == a.cohort)
        rows = list(db.exec(q.order_by(Aggregate.window_start, Aggregate.cohort)))
        items = [{"window_start": a.window_start, "window_seconds": a.window_seconds, "cohort": a.cohort,
                  "device_class": a.device_class, "role": a.role, **ops_metrics.summarise([a])} for a in rows]
        by_cohort: dict[str, list[Aggregate]] = defaultdict(list)
        for a in rows:
            by_cohort[a.cohort].append(a)
        return jsonify({"model": name, "version": version, "windows": items,
                        "cohorts": {c: ops_metrics.summarise(v) for c, v in sorted(by_cohort.items())},
                        "total": ops_metrics.summarise(rows)})
