"""Time series for the console (Grafana-like panels drawn by the vendored uPlot): requests,
errors, latency p50/p99 and drift (max feature PSI against the manifest baseline) per telemetry
window, for a model version, a device class, a cohort or one device; beside drift, online
accuracy (Wilson interval), its label-free estimate, the low-confidence rate and accuracy per
slice, from the analytics engine (fleet.analytics) over the same windows.

The numbers come from the same stores and functions as the rest of the fleet: Aggregate rows
(merged at ingest) or a device's own TelemetryWindow rows, summarised by ops_metrics.summarise
and compared by fleet.drift.engine.compare, so a chart and the drift API can never disagree.
Only the one-device view reads raw windows (that device's, at most MAX_WINDOWS * 20 of them, as far
back as retention keeps them): fleet-wide views, drift and rollouts read aggregates (issue 19).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from flask import jsonify, render_template, request
from sqlmodel import Session, select

from fleet import ops_metrics
from fleet.app import fleet_context
from fleet.console.views import bp
from fleet.drift import alerts
from fleet.drift.engine import compare
from fleet.errors import ApiError
from fleet.models import Aggregate, Device, ModelVersion, TelemetryWindow
from fleet.registry.auth import require_role
from fleet.settings import FleetSettings

RANGES = {"1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
MAX_WINDOWS = 2000
MAX_SLICE_SERIES = 8  # the slices with the most labels; the rest stay in the model card / API
QUALITY_KEYS = ("accuracy", "accuracy_low", "accuracy_high", "accuracy_estimate", "low_confidence_rate", "labelled")


def _float_arg(name: str) -> float | None:
    v = request.args.get(name)
    if v in (None, ""):
        return None
    try:
        t = float(v)
    except ValueError:
        t = math.nan
    if not math.isfinite(t) or not 0 <= t < 1e11:
        raise ApiError(400, "bad-request", f"{name} must be a unix time in seconds")
    return t


def _time_range(args: Mapping[str, str]) -> tuple[float, float, str]:
    """since/until (unix seconds) win over range=1h|6h|24h|7d|30d (default 24h, ending now)."""
    rng = args.get("range") or "24h"
    if rng not in RANGES:
        raise ApiError(400, "bad-request", f"range must be one of {', '.join(RANGES)}")
    until = _float_arg("until") or time.time()
    since = _float_arg("since") or until - RANGES[rng]
    return since, until, rng


def _rows(db: Session, f: Mapping[str, Any], since: float, until: float) -> list[tuple[float, int, Any]]:
    """(window_start, model version, payload) rows of the selection, oldest first."""
    if f.get("device"):
        q = select(TelemetryWindow.window_start, TelemetryWindow.model_version, TelemetryWindow.payload).where(
            TelemetryWindow.device_id == f["device"], TelemetryWindow.role == "active")
        cols = (TelemetryWindow.model_name, TelemetryWindow.model_version, TelemetryWindow.window_start)
    else:
        q = select(Aggregate.window_start, Aggregate.model_version, Aggregate.payload).where(
            Aggregate.role == "active")
        cols = (Aggregate.model_name, Aggregate.model_version, Aggregate.window_start)
        if f.get("device_class"):
            q = q.where(Aggregate.device_class == f["device_class"])
        if f.get("cohort"):
            q = q.where(Aggregate.cohort == f["cohort"])
    if f.get("model"):
        q = q.where(cols[0] == f["model"])
    if f.get("version") is not None:
        q = q.where(cols[1] == f["version"])
    q = q.where(cols[2] >= since, cols[2] < until).order_by(cols[2].desc()).limit(MAX_WINDOWS * 20)
    return list(reversed(db.exec(q).all()))


def series(db: Session, settings: FleetSettings, f: Mapping[str, Any], since: float, until: float) -> dict[str, Any]:
    by_window: dict[float, list[tuple[int, Any]]] = defaultdict(list)
    for ws, version, payload in _rows(db, f, since, until):
        by_window[float(ws)].append((int(version), payload))
    windows = sorted(by_window)[-MAX_WINDOWS:]
    baselines: dict[int, Any] = {}
    out: dict[str, list[Any]] = {k: [] for k in ("t", "requests", "errors", "error_rate", "p50_ms", "p99_ms",
                                                 "max_psi", *QUALITY_KEYS)}
    slices: dict[str, list[Any]] = {}
    for ws in windows:
        group = by_window[ws]
        s = ops_metrics.summarise([p for _, p in group])
        out["t"].append(ws)
        out["requests"].append(s["requests"])
        out["errors"].append(s["errors"])
        out["error_rate"].append(round(s["error_rate"], 6))
        out["p50_ms"].append(round(s["latency_p50_us"] / 1000, 3) if s["latency_samples"] else None)
        out["p99_ms"].append(round(s["latency_p99_us"] / 1000, 3) if s["latency_samples"] else None)
        out["max_psi"].append(_max_psi(db, settings, f.get("model"), group, baselines))
        q, per_slice = _quality([p for _, p in group])
        for k in QUALITY_KEYS:
            out[k].append(q.get(k))
        for key, acc in per_slice.items():
            slices.setdefault(key, [None] * (len(out["t"]) - 1)).append(acc)
        for col in slices.values():
            col.extend([None] * (len(out["t"]) - len(col)))
    return {"filter": {k: v for k, v in f.items() if v not in (None, "")}, "since": since, "until": until,
            "windows": len(windows), "series": out, "slices": _top_slices(slices)}


def _quality(payloads: list[Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """One window's online quality (labels fed back on the device) and accuracy per slice."""
    try:
        from fleet.analytics.quality import merge_payloads
    except ImportError:  # no analytics engine in this build
        return {}, {}
    q = merge_payloads(payloads)
    acc, est = q.accuracy(), q.estimated_accuracy()
    out: dict[str, Any] = {"accuracy_estimate": est["value"] if est else None,
                           "low_confidence_rate": q.low_confidence_rate(), "labelled": q.labelled if q.kind else None}
    if acc:
        out.update(accuracy=acc["value"], accuracy_low=acc["low"], accuracy_high=acc["high"])
    per_slice = {k: v["accuracy"] for k, v in q.slices().items() if "accuracy" in v}
    return out, per_slice


def _top_slices(slices: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """At most MAX_SLICE_SERIES slices, those with values in the most windows (bounded panels)."""
    ranked = sorted(slices, key=lambda k: (-sum(v is not None for v in slices[k]), k))
    return {k: slices[k] for k in sorted(ranked[:MAX_SLICE_SERIES])}


def _max_psi(db: Session, settings: FleetSettings, model: str | None, group: list[tuple[int, Any]],
             baselines: dict[int, Any]) -> float | None:
    """Largest feature PSI of this window against its version's manifest baseline (None: no baseline)."""
    version = max(v for v, _ in group)
    if version not in baselines:
        baselines[version] = alerts.baseline_for(db, model, version) if model else None
    base = baselines[version]
    payloads = [p for v, p in group if v == version and p.get("features")]
    if base is None or not payloads:
        return None
    try:
        rep = compare(payloads, base, settings, reference_label="baseline")
    except (ValueError, KeyError):
        return None
    return round(max((ft.psi for ft in rep.features), default=0.0), 5)


def _filter() -> dict[str, Any]:
    a = request.args
    version = a.get("version")
    if version not in (None, "") and not (str(version).isdigit() and int(version) < 2**31):
        raise ApiError(400, "bad-request", "version must be a whole number")
    return {"model": a.get("model") or None, "version": int(version) if version else None,
            "device_class": a.get("device_class") or None, "cohort": a.get("cohort") or None,
            "device": a.get("device") or None}


@bp.get("/series.json")
@require_role("viewer", html=True)
def series_json():  # type: ignore[no-untyped-def]
    """?model=&version=&device_class=&cohort=&device=&range=24h|since=&until= -> aligned arrays."""
    ctx = fleet_context()
    f = _filter()
    since, until, _ = _time_range(request.args)
    with ctx.read_session() as db:
        if f["device"] and not f["model"]:
            d = db.get(Device, f["device"])
            f["model"] = d.installed_name if d is not None else None
        return jsonify(series(db, ctx.settings, f, since, until))


@bp.get("/series", endpoint="series")
@require_role("viewer", html=True)
def series_page():  # type: ignore[no-untyped-def]
    f = _filter()
    since, until, rng = _time_range(request.args)
    with fleet_context().read_session() as db:
        models = sorted({(n, v) for n, v in db.exec(select(ModelVersion.name, ModelVersion.version).distinct())})
        classes = sorted({c for c in db.exec(select(Aggregate.device_class).distinct()) if c})
        cohorts = sorted({c for c in db.exec(select(Aggregate.cohort).distinct()) if c})
    return render_template("console/series.html", f=f, since=since, until=until, rng=rng, ranges=list(RANGES),
                           models=models, classes=classes, cohorts=cohorts,
                           explicit="since" in request.args or "until" in request.args)

