"""The audit page: filters (actor, action, object, time), free-text search, readable rows and
export of the same selection as CSV or JSON (for an auditor's spreadsheet or a SIEM)."""

from __future__ import annotations

import csv
import io
import json
import math
from calendar import timegm
from collections.abc import Mapping
from time import strptime
from typing import Any

from flask import Response, render_template, request
from sqlalchemy import String, cast, or_
from sqlmodel import Session, select

from fleet.api.validation import offset_arg
from fleet.app import fleet_context
from fleet.console.views import bp
from fleet.errors import ApiError
from fleet.models import AuditEntry
from fleet.registry.auth import require_role

PAGE = 50
EXPORT_MAX = 50_000
FIELDS = ("id", "at", "at_utc", "actor", "action", "target", "before", "after")


def _when(v: str | None, name: str) -> float | None:
    """'2026-12-01T10:30' (UTC, as a datetime-local input sends it) or unix seconds."""
    if not v:
        return None
    try:
        t = float(v)
        if math.isfinite(t) and 0 <= t < 1e11:
            return t
    except ValueError:
        pass
    for fmt in ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            return float(timegm(strptime(v, fmt)))
        except ValueError:
            continue
    raise ApiError(400, "bad-request", f"{name} must be a date like 2026-12-01T10:30 (UTC) or unix seconds")


def query(args: Mapping[str, str]) -> Any:
    """The selection: actor exact, action prefix ('rollout.' gives every rollout action), object
    substring, since/until, and q searched in actor, action, object and the before/after JSON."""
    q = select(AuditEntry)
    if args.get("actor"):
        q = q.where(AuditEntry.actor == args["actor"])
    if args.get("action"):
        q = q.where(AuditEntry.action.startswith(args["action"]))
    if args.get("object"):
        q = q.where(AuditEntry.target.contains(args["object"]))
    since, until = _when(args.get("since"), "since"), _when(args.get("until"), "until")
    if since is not None:
        q = q.where(AuditEntry.at >= since)
    if until is not None:
        q = q.where(AuditEntry.at < until)
    if args.get("q"):
        like = f"%{args['q'].lower()}%"
        q = q.where(or_(*(cast(c, String).ilike(like) for c in (
            AuditEntry.actor, AuditEntry.action, AuditEntry.target, AuditEntry.before, AuditEntry.after))))
    return q.order_by(AuditEntry.id.desc())


def row(e: AuditEntry) -> dict[str, Any]:
    from time import gmtime, strftime

    return {"id": e.id, "at": e.at, "at_utc": strftime("%Y-%m-%dT%H:%M:%SZ", gmtime(e.at)), "actor": e.actor,
            "action": e.action, "target": e.target, "before": e.before, "after": e.after}


def _distinct(db: Session, col: Any) -> list[str]:
    return sorted({v for v in db.exec(select(col).distinct().limit(500)) if v})


@bp.get("/audit")
@require_role("operator", html=True)
def audit():  # type: ignore[no-untyped-def]
    offset = offset_arg()
    args = {k: v for k, v in request.args.items() if k != "offset" and v}
    with fleet_context().session() as db:
        rows = list(db.exec(query(args).offset(offset).limit(PAGE)))
        return render_template("console/audit.html", entries=rows, offset=offset, page=PAGE, args=args,
                               actors=_distinct(db, AuditEntry.actor),
                               actions=sorted({a.split(".")[0] + "." for a in _distinct(db, AuditEntry.action)}
                                              | set(_distinct(db, AuditEntry.action))))


@bp.get("/audit.<fmt>")
@require_role("operator", html=True)
def audit_export(fmt: str):  # type: ignore[no-untyped-def]
    if fmt not in ("csv", "json"):
        raise ApiError(404, "not-found", "export as audit.csv or audit.json")
    with fleet_context().session() as db:
        rows = [row(e) for e in db.exec(query(request.args).limit(EXPORT_MAX))]
    headers = {"Content-Disposition": f"attachment; filename=edgefleet-audit.{fmt}"}
    if fmt == "json":
        return Response(json.dumps(rows, indent=1), mimetype="application/json", headers=headers)
    buf = io.StringIO()
    w = csv.DictWriter(buf, FIELDS)
    w.writeheader()
    for r in rows:
        w.writerow({**r, "before": json.dumps(r["before"]) if r["before"] is not None else "",
                    "after": json.dumps(r["after"]) if r["after"] is not None else ""})
    return Response(buf.getvalue(), mimetype="text/csv", headers=headers)
