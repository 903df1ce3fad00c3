"""Model catalogue API: upload bundles, list models and versions, lineage, performance history."""

from __future__ import annotations

from collections import defaultdict

from flask import Blueprint, jsonify, request
from sqlmodel import select

from fleet import catalogue, ops_metrics
from fleet.app import fleet_context
from fleet.auth import actor, require_role
from fleet.errors import ApiError, page, paginate_args
from fleet.fleet_keys import build_keyring
from fleet.models import Aggregate, ModelVersion

bp = Blueprint("api_models", __name__, url_prefix="/api/models")


@bp.post("")
@require_role("operator")
def upload():  # type: ignore[no-untyped-def]
    """Body: the bundle bytes (application/octet-stream) or a multipart field named `bundle`."""
    ctx = fleet_context()
    f = request.files.get("bundle")
    stream = f.stream if f is not None else request.stream
    tmp = catalogue.store_upload(ctx.settings, stream)
    if tmp.stat().st_size == 0:
        tmp.unlink()
        raise ApiError(400, "bad-request", "empty upload; send the bundle as the body or as multipart 'bundle'")
    try:
        with ctx.session() as db:
            res = catalogue.add_bundle(db, ctx.settings, tmp, build_keyring(ctx.settings), actor())
            view = catalogue.version_view(res.version, base_url=ctx.settings.public_url)
    except catalogue.CatalogueError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from exc
    return jsonify(view), 201 if res.created else 200


@bp.get("")
@require_role("viewer")
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
def versions(name: str):  # type: ignore[no-untyped-def]
    limit, offset = paginate_args()
    ctx = fleet_context()
    with ctx.session() as db:
        rows = list(db.exec(select(ModelVersion).where(ModelVersion.name == name)
                            .order_by(ModelVersion.version.desc(), ModelVersion.device_class)))
        if not rows:
            raise ApiError(404, "not-found", f"no model {name!r}")
        items = [catalogue.version_view(r, base_url=ctx.settings.public_url) for r in rows[offset:offset + limit]]
        return jsonify(page(items, len(rows), limit, offset))


@bp.get("/<name>/versions/<int:version>")
@require_role("viewer")
def version(name: str, version: int):  # type: ignore[no-untyped-def]
    ctx = fleet_context()
    with ctx.session() as db:
        q = select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
        if request.args.get("device_class"):
            q = q.where(ModelVersion.device_class == request.args["device_class"])
        rows = list(db.exec(q))
        if not rows:
            raise ApiError(404, "not-found", f"no {name} v{version}")
        return jsonify({"items": [catalogue.version_view(r, with_manifest=True, base_url=ctx.settings.public_url)
                                  for r in rows]})


@bp.get("/<name>/versions/<int:version>/performance")
@require_role("viewer")
def performance(name: str, version: int):  # type: ignore[no-untyped-def]
    """History per window and cohort: requests, error rate, latency p50/p99, resources."""
    with fleet_context().session() as db:
        q = select(Aggregate).where(Aggregate.model_name == name, Aggregate.model_version == version)
        if request.args.get("role"):
            q = q.where(Aggregate.role == request.args["role"])
        if request.args.get("cohort"):
            q = q.where(Aggregate.cohort == request.args["cohort"])
        rows = list(db.exec(q.order_by(Aggregate.window_start, Aggregate.cohort)))
        items = [{"window_start": a.window_start, "window_seconds": a.window_seconds, "cohort": a.cohort,
                  "device_class": a.device_class, "role": a.role, **ops_metrics.summarise([a])} for a in rows]
        by_cohort: dict[str, list[Aggregate]] = defaultdict(list)
        for a in rows:
            by_cohort[a.cohort].append(a)
        return jsonify({"model": name, "version": version, "windows": items,
                        "cohorts": {c: ops_metrics.summarise(v) for c, v in sorted(by_cohort.items())},
                        "total": ops_metrics.summarise(rows)})
