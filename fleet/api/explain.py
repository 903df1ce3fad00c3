"""Fleet-requested explanations over REST (issue 15 item 4): an operator asks one device to explain
its next sampled requests (a fleet-signed `explain` command), then reads the attributions back.

POST /api/devices/<id>/explain             operator  {count, sample_rate, top_k, ttl_s} -> 202 + request
GET  /api/devices/<id>/explanations/<cid>  viewer    the request, its status and the explanations so far
The domain rules live in fleet/drift/explain_requests.py; this module only maps them to HTTP.
"""

from __future__ import annotations

from typing import Annotated

from flask import Blueprint, jsonify
from pydantic import Field

from fleet.api import responses as r
from fleet.api.schemas import Strict
from fleet.api.validation import api, body
from fleet.app import fleet_context
from fleet.drift import explain_requests as er
from fleet.registry.auth import actor, require_role

bp = Blueprint("api_explain", __name__, url_prefix="/api/devices")


class ExplainBody(Strict):
    count: Annotated[int, Field(ge=1, le=er.MAX_COUNT, description="requests to explain")] = 5
    sample_rate: Annotated[float, Field(gt=0, le=1, description="share of requests drawn")] = 1.0
    top_k: Annotated[int, Field(ge=1, le=1024, description="attributions kept per row")] | None = 10
    ttl_s: Annotated[float, Field(ge=10, le=7 * 86400, description="the command expires after")] = 3600.0


class ExplainRequestView(r.Open):
    device_id: str
    command_id: str
    count: int
    sample_rate: float
    top_k: int | None
    status: str
    received: int
    failed: int
    refused: str | None
    explanations: list[r.Obj]
    failures: list[r.Obj]


@bp.post("/<device_id>/explain")
@require_role("operator")
@api(body=ExplainBody, body_required=False, responses={202: ExplainRequestView})
def request_explain(device_id: str):  # type: ignore[no-untyped-def]
    """Ask the device to explain its next `count` sampled requests with its own runtime (a signed
    `explain` command). Answers carry attributions only, never raw inputs unless the device has raw
    sampling on. 404 unknown device; 409 device-not-active or no-model-installed."""
    from fleet.rollouts import api as rollouts_api

    ctx, b = fleet_context(), body()
    with ctx.session() as db:
        view = er.request_for(db, device_id, rollouts_api._signer(db), actor(), count=b.count,
                              sample_rate=b.sample_rate, top_k=b.top_k, ttl_s=b.ttl_s)
    rollouts_api._publish()
    return jsonify(view), 202


@bp.get("/<device_id>/explanations/<command_id>")
@require_role("viewer")
@api(responses={200: ExplainRequestView})
def show_explanations(device_id: str, command_id: str):  # type: ignore[no-untyped-def]
    """One explain request: status (queued, sent, partial, complete, refused, expired) and the
    device's explanations so far, oldest first."""
    with fleet_context().session() as db:
        return jsonify(er.request_status(db, device_id, command_id))
