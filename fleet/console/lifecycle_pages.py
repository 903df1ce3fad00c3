"""Console pages of the model lifecycle (issue 16): the model card of a version (HTML) and the
review schedule with an OVERDUE badge per model. Kept beside the console (its base template,
its login) in their own blueprint so the console's own pages stay untouched."""

from __future__ import annotations

import time

from flask import Blueprint, abort, redirect, render_template, request, url_for

from fleet.app import fleet_context
from fleet.catalogue import lifecycle, model_card, reviews
from fleet.registry.auth import actor, current_principal, require_role

bp = Blueprint("lifecycle_console", __name__, url_prefix="/console", template_folder="templates_lifecycle")


@bp.context_processor
def _ctx() -> dict:  # type: ignore[type-arg]
    """What console/base.html reads (the console's own processor serves only its blueprint)."""
    return {"principal": current_principal(), "nav": request.endpoint}


@bp.app_context_processor
def _overdue() -> dict:  # type: ignore[type-arg]
    """`reviews_overdue()` for the console's nav badge: computed only when a page calls it."""

    def reviews_overdue() -> int:
        ctx = fleet_context()
        try:
            with ctx.session() as db:
                return sum(s.overdue for s in reviews.states(db, default_days=ctx.settings.lifecycle
                                                             .review_interval_days))
        except Exception:  # noqa: BLE001 - a badge never breaks a page
            return 0

    return {"reviews_overdue": reviews_overdue}


@bp.get("/models/<name>/<int:version>/card")
@require_role("viewer", html=True)
def card(name: str, version: int):  # type: ignore[no-untyped-def]
    with fleet_context().session() as db:
        try:
            c = model_card.build_card(db, name, version)
        except lifecycle.LifecycleError:
            abort(404)
    return render_template("lifecycle/card.html", card=c)


@bp.get("/lifecycle")
@require_role("viewer", html=True)
def schedule():  # type: ignore[no-untyped-def]
    ctx = fleet_context()
    with ctx.session() as db:
        items = reviews.states(db, default_days=ctx.settings.lifecycle.review_interval_days)
        rows = [(s, lifecycle.owner_view(db.get(lifecycle.ModelOwner, s.name), s.name)) for s in items]
    return render_template("lifecycle/schedule.html", rows=rows, now=time.time(),
                           overdue=sum(s.overdue for s in items))


@bp.get("/models/<name>/compare")
@require_role("viewer", html=True)
def compare(name: str):  # type: ignore[no-untyped-def]
    """Two versions side by side: status, build metrics, per-slice results, field results by
    cohort, and the lineage and training-run facts with the differences marked."""
    a, b = request.args.get("a", type=int), request.args.get("b", type=int)
    if a is None or b is None:
        abort(400)
    with fleet_context().session() as db:
        try:
            ca, cb = model_card.build_card(db, name, a), model_card.build_card(db, name, b)
        except lifecycle.LifecycleError:
            abort(404)
    return render_template("lifecycle/compare.html", name=name, a=ca, b=cb, rows=model_card.diff_rows(ca, cb))


@bp.post("/models/<name>/<int:version>/status")
@require_role("operator", html=True)
def set_status(name: str, version: int):  # type: ignore[no-untyped-def]
    """Deprecate, retire or reactivate from the card (a reason is required, as in the API)."""
    try:
        with fleet_context().session() as db:
            lifecycle.set_status(db, name, version, request.form.get("status", ""), request.form.get("reason", ""),
                                 actor())
    except lifecycle.LifecycleError as exc:
        return render_error(name, version, exc)
    return redirect(url_for("lifecycle_console.card", name=name, version=version))


@bp.post("/models/<name>/<int:version>/move-off")
@require_role("operator", html=True)
def move_off(name: str, version: int):  # type: ignore[no-untyped-def]
    """One click: roll the newest active version out to every device still on this one."""
    from fleet.rollouts import api as rollouts_api
    from fleet.rollouts import service

    ctx = fleet_context()
    try:
        with ctx.session() as db:
            spec = lifecycle.move_off_spec(db, name, version, ctx.settings.fleet_id)
            ro = service.create_rollout(db, spec, actor())
            db.flush()
            rid = ro.id
    except lifecycle.LifecycleError as exc:
        return render_error(name, version, exc)
    except service.RolloutError as exc:
        return render_error(name, version, lifecycle.LifecycleError(exc.status, exc.code, str(exc)))
    rollouts_api._publish()
    return redirect(url_for("rollouts.console_detail", rollout_id=rid))


def render_error(name: str, version: int, exc: lifecycle.LifecycleError):  # type: ignore[no-untyped-def]
    with fleet_context().session() as db:
        try:
            c = model_card.build_card(db, name, version)
        except lifecycle.LifecycleError:
            abort(404)
    return render_template("lifecycle/card.html", card=c, error=exc.message), exc.status
