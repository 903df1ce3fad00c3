"""Raw-input data quality per version (issue 15 item 1): the agent validates raw rows against the
bundle's feature schema and counts violations per feature (missing, out of range, unknown
category) in each telemetry window's `data_quality` block; ingest adds them up in the aggregates
(fleet/ingest/aggregate_quality.py). This module reads them back for the API, the console's model
page and the Prometheus gauge. It is a signal separate from drift: a broken sensor sending NaN is
a data-quality problem even when the distribution of the values that do arrive has not moved.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlmodel import Session, select

from fleet.ingest.aggregate_quality import DQ_KINDS
from fleet.models import Aggregate


def summarise(payloads: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """{requests, violations, rate, features: [{feature, <kind>: n, total, rate}] worst first} over
    aggregate (or telemetry) payloads; rate = violations per request (a request may carry several rows)."""
    per: dict[str, dict[str, int]] = {}
    requests = 0
    for p in payloads:
        requests += int(p.get("requests", 0) or 0)
        for name, kinds in (p.get("data_quality") or {}).items():
            slot = per.setdefault(str(name), dict.fromkeys(DQ_KINDS, 0))
            for kind in DQ_KINDS:
                slot[kind] += int((kinds or {}).get(kind, 0) or 0)
    rows = [{"feature": n, **k, "total": sum(k.values()),
             "rate": round(sum(k.values()) / requests, 6) if requests else None} for n, k in per.items()]
    rows.sort(key=lambda r: (-r["total"], r["feature"]))
    total = sum(r["total"] for r in rows)
    return {"requests": requests, "violations": total, "rate": round(total / requests, 6) if requests else None,
            "kinds": list(DQ_KINDS), "features": rows}


def version_quality(db: Session, name: str, version: int, *, device_class: str | None = None,
                    role: str = "active", since: float | None = None, until: float | None = None) -> dict[str, Any]:
    """The version's data quality over its stored aggregates (filters: device class, role, time range)."""
    q = select(Aggregate).where(Aggregate.model_name == name, Aggregate.model_version == version,
                                Aggregate.role == role)
    if device_class:
        q = q.where(Aggregate.device_class == device_class)
    if since is not None:
        q = q.where(Aggregate.window_start >= since)
    if until is not None:
        q = q.where(Aggregate.window_start < until)
    return {"model": name, "version": version, **summarise(a.payload or {} for a in db.exec(q))}


def violation_rate(rows: Iterable[Aggregate]) -> dict[str, float]:
    """{"data_quality_rate": violations per request} for the model health gauge; empty without requests."""
    s = summarise(a.payload or {} for a in rows)
    return {"data_quality_rate": s["rate"]} if s["rate"] is not None else {}
