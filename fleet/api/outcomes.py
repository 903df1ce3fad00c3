"""Outcomes and online quality (issue 14): labels in bulk by request id, and a version's report."""

from __future__ import annotations

from flask import Blueprint, jsonify

from fleet.analytics.engine import version_report
from fleet.analytics.join import post_labels
from fleet.api import responses as r
from fleet.api import schemas as sc
from fleet.api.validation import api, body, query
from fleet.app import fleet_context
from fleet.registry.auth import require_role

bp = Blueprint("api_outcomes", __name__, url_prefix="/api")


@bp.post("/outcomes")
@require_role("operator")
@api(body=sc.OutcomesBody, responses={200: r.OutcomesAccepted})
def post_outcomes():  # type: ignore[no-untyped-def]
    """Labels by request id (up to 200,000 per call); a later label for the same id replaces it.
    `matched` counts labels whose prediction record the fleet already has (others join later)."""
    items = [(o.request_id, o.label) for o in body().outcomes]
    with fleet_context().session() as db:
        return jsonify(post_labels(db, items))


@bp.get("/analytics/<name>/<int:version>")
@require_role("viewer")
@api(query=sc.QualityQuery, responses={200: r.QualityReport})
def quality(name: str, version: int):  # type: ignore[no-untyped-def]
    """Online accuracy/F1/error per class and slice with Wilson intervals, concept drift against the
    build-time eval, worst-slice gap, and the label-free (CBPE) estimate, marked as an estimate."""
    q = query()
    with fleet_context().session() as db:
        return jsonify(version_report(db, name, version, since=q.since, min_labelled=q.min_labelled))
