"""Raw-input data quality of a version (issue 15): schema violations per raw feature, summed from
the devices' telemetry (fleet/drift/data_quality.py)."""

from __future__ import annotations

from flask import Blueprint, jsonify
from sqlmodel import select

from fleet.api import responses as r
from fleet.api.schemas import Query, Text, Timestamp
from fleet.api.validation import api, query
from fleet.app import fleet_context
from fleet.drift.data_quality import version_quality
from fleet.errors import ApiError
from fleet.models import ModelVersion
from fleet.registry.auth import require_role

bp = Blueprint("api_data_quality", __name__, url_prefix="/api/models")


class DataQualityQuery(Query):
    device_class: Text | None = None
    role: Text = "active"
    since: Timestamp | None = None
    until: Timestamp | None = None


class DataQualityView(r.Open):
    model: str
    version: int
    requests: int
    violations: int
    rate: float | None
    kinds: list[str]
    features: list[r.Obj]


@bp.get("/<name>/versions/<int:version>/data-quality")
@require_role("viewer")
@api(query=DataQualityQuery, responses={200: DataQualityView})
def data_quality(name: str, version: int):  # type: ignore[no-untyped-def]
    """Raw-input schema violations per feature (missing, out_of_range, unknown_category) that the
    devices counted, worst first, with the rate per request; filter by device_class, role and a
    time range (since/until, unix time). Versions without a raw-input contract report none."""
    a = query()
    with fleet_context().session() as db:
        if db.exec(select(ModelVersion.id).where(ModelVersion.name == name, ModelVersion.version == version)).first() \
                is None:
            raise ApiError(404, "not-found", f"no model {name!r} version {version}")
        return jsonify(version_quality(db, name, version, device_class=a.device_class, role=a.role,
                                       since=a.since, until=a.until))
