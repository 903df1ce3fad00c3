"""Model lifecycle API (issue 16): owner, version status with audited reasons, the rollout that
moves devices off a retired version, and the revocation list for the next signed key list."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from flask import Blueprint, jsonify
from pydantic import Field

from fleet.api import responses as r
from fleet.api.schemas import Query, Strict, Text
from fleet.api.validation import api, body
from fleet.app import fleet_context
from fleet.catalogue import lifecycle
from fleet.errors import ApiError
from fleet.registry.auth import actor, require_role

bp = Blueprint("api_lifecycle", __name__)
Reason = Annotated[str, Field(min_length=1, max_length=2000)]


class OwnerBody(Strict):
    team: Annotated[str, Field(max_length=500)] = ""
    contact: Annotated[str, Field(max_length=500)] = ""
    oncall: Annotated[str, Field(max_length=500)] = ""
    review_interval_days: Annotated[int, Field(ge=1, le=3650)] | None = None
    reason: Reason


class StatusBody(Strict):
    status: Literal["active", "deprecated", "retired"]
    reason: Reason


class MoveOffBody(Strict):
    fleet: Text | None = None


def guard(fn: Any, *args: Any, **kw: Any) -> Any:
    try:
        return fn(*args, **kw)
    except lifecycle.LifecycleError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from exc


@bp.get("/api/models/<name>/owner")
@require_role("viewer")
@api(responses={200: r.Open})
def get_owner(name: str):  # type: ignore[no-untyped-def]
    from fleet.models import ModelOwner

    with fleet_context().session() as db:
        return jsonify(lifecycle.owner_view(db.get(ModelOwner, name), name))


@bp.put("/api/models/<name>/owner")
@require_role("operator")
@api(body=OwnerBody, responses={200: r.Open})
def put_owner(name: str):  # type: ignore[no-untyped-def]
    """Change the owner (team, contact, on-call, review interval); audited with the reason."""
    b = body()
    fields = lifecycle.OwnerFields(b.team, b.contact, b.oncall, b.review_interval_days)
    with fleet_context().session() as db:
        o = guard(lifecycle.set_owner, db, name, fields, actor(), b.reason)
        return jsonify(lifecycle.owner_view(o, name))


@bp.get("/api/models/<name>/versions/<int:version>/status")
@require_role("viewer")
@api(responses={200: r.Open})
def get_status(name: str, version: int):  # type: ignore[no-untyped-def]
    with fleet_context().session() as db:
        return jsonify(lifecycle.status_view(name, version, lifecycle.status_of(db, name, version)))


@bp.post("/api/models/<name>/versions/<int:version>/status")
@require_role("operator")
@api(body=StatusBody, responses={200: r.Open})
def post_status(name: str, version: int):  # type: ignore[no-untyped-def]
    """Deprecate (new rollouts need allow_deprecated), retire (no rollout; devices refuse it once
    the next signed key list carries the revocation) or reactivate a deprecated version."""
    b = body()
    with fleet_context().session() as db:
        row = guard(lifecycle.set_status, db, name, version, b.status, b.reason, actor())
        out = lifecycle.status_view(name, version, row)
        if b.status == "retired":
            out["revocations"] = lifecycle.revocations(db)
            out["hint"] = ("sign the next key list with these revocations (edgefleet keys sign-keylist --revoked"
                           " FILE) and upload it, so devices refuse the version")
        return jsonify(out)


@bp.post("/api/models/<name>/versions/<int:version>/move-off")
@require_role("operator")
@api(body=MoveOffBody, body_required=False, responses={201: r.Open})
def move_off(name: str, version: int):  # type: ignore[no-untyped-def]
    """One click: a rollout of the newest active version to every device still running this one."""
    from fleet.rollouts import api as rollouts_api
    from fleet.rollouts import service

    ctx = fleet_context()
    b = body()
    fleet = (b.fleet if b is not None else None) or ctx.settings.fleet_id
    with ctx.session() as db:
        spec = guard(lifecycle.move_off_spec, db, name, version, fleet)
        ro = rollouts_api._guard(service.create_rollout, db, spec, actor())
        db.flush()
        out = service.rollout_detail(db, ro)
    rollouts_api._publish()
    return jsonify(out), 201


@bp.get("/api/lifecycle/revocations")
@require_role("viewer")
@api(responses={200: r.Open})
def get_revocations():  # type: ignore[no-untyped-def]
    """Retired versions, the `revoked` section for `edgefleet keys sign-keylist --revoked`."""
    with fleet_context().session() as db:
        return jsonify({"revoked": lifecycle.revocations(db)})


class DecommissionBody(Strict):
    reason: Reason
    fleet: Text | None = None
    device_class: Text | None = None
    version: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    purge_artifacts: bool = False


@bp.post("/api/models/<name>/decommission")
@require_role("operator")
@api(body=DecommissionBody, responses={202: r.Open})
def decommission(name: str):  # type: ignore[no-untyped-def]
    """Send a signed `uninstall` to every active device of the fleet (or one device class): the
    agents unload the model, delete its files and report `uninstalled`. The catalogue keeps the
    record; `purge_artifacts` deletes the stored bundles too."""
    from fleet.registry.decommission import Decommission
    from fleet.registry.decommission import decommission as run
    from fleet.rollouts import api as rollouts_api

    ctx, b = fleet_context(), body()
    d = Decommission(name, b.fleet or ctx.settings.fleet_id, b.reason, b.device_class, b.version, b.purge_artifacts)
    with ctx.session() as db:
        out = guard(run, db, ctx.settings, d, rollouts_api._signer(db), actor())
    rollouts_api._publish()
    return jsonify(out), 202


class ReviewBody(Strict):
    decision: Literal["keep", "retrain", "retire"]
    notes: Annotated[str, Field(max_length=4000)] = ""
    version: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None


@bp.post("/api/models/<name>/reviews")
@require_role("operator")
@api(body=ReviewBody, responses={201: r.Open})
def post_review(name: str):  # type: ignore[no-untyped-def]
    """Record a scheduled review (you are the reviewer): keep, retrain or retire (with the version)."""
    from fleet.catalogue import reviews

    ctx, b = fleet_context(), body()
    with ctx.session() as db:
        rv = guard(reviews.record_review, db, name, b.decision, b.notes, actor(), b.version)
        out = {**reviews.review_view(rv),
               "next": reviews.state_of(db, name, default_days=ctx.settings.lifecycle.review_interval_days).to_dict()}
    return jsonify(out), 201


@bp.get("/api/models/<name>/reviews")
@require_role("viewer")
@api(responses={200: r.Open})
def get_reviews(name: str):  # type: ignore[no-untyped-def]
    """The model's review schedule (due date, overdue) and its reviews, newest first."""
    from sqlmodel import select

    from fleet.catalogue import reviews
    from fleet.models import ModelReview

    ctx = fleet_context()
    with ctx.session() as db:
        items = [reviews.review_view(x) for x in db.exec(select(ModelReview).where(ModelReview.name == name)
                                                          .order_by(ModelReview.at.desc()))]
        state = reviews.state_of(db, name, default_days=ctx.settings.lifecycle.review_interval_days)
        return jsonify({"schedule": state.to_dict(), "items": items})


@bp.get("/api/models/<name>/history")
@require_role("viewer")
@api(responses={200: r.Open})
def get_history(name: str):  # type: ignore[no-untyped-def]
    """Uploads, owner and status changes, reviews and decommissions of the model, newest first."""
    from fleet.catalogue import reviews

    with fleet_context().session() as db:
        return jsonify({"items": reviews.history(db, name)})


@bp.get("/api/lifecycle/reviews")
@require_role("viewer")
@api(responses={200: r.Open})
def review_schedule():  # type: ignore[no-untyped-def]
    """Every model's next review date; `overdue` counts those past due (as the gauge does)."""
    from fleet.catalogue import reviews

    ctx = fleet_context()
    with ctx.session() as db:
        items = reviews.states(db, default_days=ctx.settings.lifecycle.review_interval_days)
    overdue = sum(s.overdue for s in items)
    reviews.REVIEWS_OVERDUE.set(overdue)
    return jsonify({"items": [s.to_dict() for s in items], "overdue": overdue})


class CardQuery(Query):
    format: Literal["json", "markdown"] = "json"


@bp.get("/api/models/<name>/versions/<int:version>/card")
@require_role("viewer")
@api(query=CardQuery, responses={200: r.Open})
def card(name: str, version: int):  # type: ignore[no-untyped-def]
    """The version's model card: JSON, or Markdown with `format=markdown` (text/markdown)."""
    from flask import Response

    from fleet.api.validation import query
    from fleet.catalogue import model_card

    with fleet_context().session() as db:
        c = guard(model_card.build_card, db, name, version)
    if query().format == "markdown":
        return Response(model_card.to_markdown(c), content_type="text/markdown; charset=utf-8")
    return jsonify(c)
