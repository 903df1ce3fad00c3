"""Console pages: login (token -> signed cookie), overview, devices, models, drift, alerts, audit."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, session, url_for

from fleet.app import fleet_context
from fleet.registry.auth import hash_token, principal_for_hash

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
               static_folder="static", static_url_path="/static")


@bp.route("/login", methods=["GET", "POST"])
def login():  # type: ignore[no-untyped-def]
    error = None
    if request.method == "POST":
        token = request.form.get("token", "").strip()
        ctx = fleet_context()
        with ctx.session() as db:
            p = principal_for_hash(db, hash_token(token), ctx.bootstrap_token_hashes) if token else None
        if p is None:
            error = "That token is not valid."
        else:
            session.clear()
            session["token_hash"] = hash_token(token)
            nxt = request.args.get("next") or ""
            return redirect(nxt if nxt.startswith("/console") else url_for("console.overview"))
    return render_template("console/login.html", error=error), (401 if error else 200)


@bp.get("/logout")
def logout():  # type: ignore[no-untyped-def]
    session.clear()
    return redirect(url_for("console.login"))


from fleet.console import rollout_view  # noqa: E402

bp.add_app_template_global(rollout_view, "rollout_view")   # also used by fleet/rollouts/templates

from fleet.console import audit_page, pages, series  # noqa: E402,F401  (registers the page routes on bp)
