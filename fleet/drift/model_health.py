"""Model health for monitoring stacks: Prometheus gauges per model, version and device class,
computed from the stored aggregates at scrape time (the same merged windows the console and the
gates read), so the alerts docs/runbook.md recommends can be written in PromQL.

Why a collector and not counters updated at ingest: ingest runs in several processes and the
numbers (PSI, quantiles, accuracy) are properties of merged windows, not of one message.
Cardinality stays bounded: labels are model, version and device class only (never device or
cohort), only versions with telemetry in the look-back are exported, and at most `max_series`
groups are (the newest first; the rest are counted in `edgefleet_model_health_series_dropped`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import case, func
from sqlmodel import Session, select

from fleet import ops_metrics
from fleet.drift import alerts
from fleet.drift.data_quality import violation_rate
from fleet.models import Aggregate, DeviceVersionWindows, DriftAlert, ModelVersion

LABELS = ["model", "version", "device_class"]
# How far back a scrape looks (aggregates and reporting devices), and for "last telemetry" how far.
LOOKBACK_S = 900.0
LAST_SEEN_HORIZON_S = 86400.0
MAX_SERIES = 500


@dataclass(frozen=True)
class Family:
    name: str
    doc: str
    key: str  # the key of the per-group value dict


# One table: metric name, help, and which computed value it carries (None values are not exported).
FAMILIES = (
    Family("edgefleet_model_requests", "Requests served in the look-back window", "requests"),
    Family("edgefleet_model_error_rate", "Errors / requests in the look-back window", "error_rate"),
    Family("edgefleet_model_latency_p50_seconds", "Latency median over the look-back window", "p50"),
    Family("edgefleet_model_latency_p99_seconds", "Latency 99th percentile over the look-back window", "p99"),
    Family("edgefleet_model_feature_psi_max", "Largest feature PSI against the bundle's baseline", "psi_max"),
    Family("edgefleet_model_prediction_psi", "Prediction PSI against the bundle's baseline", "pred_psi"),
    Family("edgefleet_model_online_accuracy", "Online accuracy from labelled outcomes", "accuracy"),
    Family("edgefleet_model_online_accuracy_estimate",
           "Label-free accuracy estimate from confidence (CBPE); an estimate", "accuracy_estimate"),
    Family("edgefleet_model_outcomes_labelled", "Labelled outcomes in the look-back window", "labelled"),
    Family("edgefleet_model_slice_gap", "Worst-slice accuracy gap (best slice minus worst slice)", "slice_gap"),
    Family("edgefleet_model_low_confidence_rate", "Share of predictions under the low-confidence threshold",
           "low_confidence_rate"),
    Family("edgefleet_model_build_accuracy", "Accuracy measured at build time (the manifest's metrics)",
           "build_accuracy"),
    Family("edgefleet_model_build_slice_gap", "Worst-slice gap measured at build time", "build_slice_gap"),
    Family("edgefleet_model_data_quality_violation_rate",
           "Raw-input schema violations (missing, out of range, unknown category) per request", "data_quality_rate"),
    Family("edgefleet_model_devices_reporting", "Devices that sent telemetry in the look-back window", "devices"),
    Family("edgefleet_model_last_telemetry_timestamp_seconds",
           "End of the newest telemetry window (unix seconds)", "last_window_end"),
)

# Optional providers of online quality (the analytics engine): (db, name, version, device_class,
# since) -> {"accuracy": float|None, "accuracy_estimate": float|None, "slice_gap": float|None}.
QualityProvider = Callable[[Session, str, int, str, float], dict[str, float | None]]
QUALITY_PROVIDERS: list[QualityProvider] = []


def _quality(db: Session, name: str, version: int, device_class: str, since: float) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for provider in QUALITY_PROVIDERS:
        try:
            out.update({k: v for k, v in provider(db, name, version, device_class, since).items() if v is not None})
        except Exception:  # noqa: BLE001 - a scrape never fails because one figure cannot be computed
            continue
    return out


def online_quality(rows: list[Aggregate]) -> dict[str, float | None]:
    """Online accuracy, its label-free estimate, worst-slice gap and low-confidence rate from the
    confidence and outcome blocks of the merged windows (fleet.analytics, the one engine)."""
    try:
        from fleet.analytics.quality import merge_payloads
    except ImportError:  # the analytics engine is not installed in this build
        return {}
    q = merge_payloads(a.payload for a in rows)
    acc, est, gap = q.accuracy(), q.estimated_accuracy(), q.worst_slice_gap()
    return {"accuracy": acc["value"] if acc else None, "labelled": q.labelled if q.kind else None,
            "accuracy_estimate": est["value"] if est else None, "slice_gap": gap["gap"] if gap else None,
            "low_confidence_rate": q.low_confidence_rate()}


def _drift(db: Session, settings: Any, name: str, version: int, device_class: str, since: float) -> dict[str, Any]:
    try:
        rep = alerts.fleet_drift(db, settings, name, version, device_class=device_class, since=since)
    except alerts.NoReference:
        return {}
    if not rep.n_current:
        return {}
    out: dict[str, Any] = {"psi_max": max((f.psi for f in rep.features), default=None)}
    if rep.prediction is not None:
        out["pred_psi"] = rep.prediction.psi
    return out


def _build_metrics(db: Session, name: str, version: int, device_class: str) -> dict[str, Any]:
    mv = db.exec(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version,
                                            ModelVersion.device_class == device_class)).first()
    m = ((mv.manifest or {}).get("metrics") or {}) if mv is not None else {}
    out: dict[str, Any] = {}
    if m.get("metric_name") == "accuracy" and m.get("metric") is not None:
        out["build_accuracy"] = float(m["metric"])
    if m.get("slices"):
        out["build_slice_gap"] = float(m.get("slice_gap", 0.0))
    return out


def _reporting(db: Session, since: float, horizon: float) -> tuple[dict[tuple[str, int, str], float],
                                                                  dict[tuple[str, int, str], int]]:
    """Per (model, version, device class), active role: the end of the newest window (within the
    horizon) and how many devices sent one after `since`, from ingest's per-device window counts
    (DeviceVersionWindows): no raw window is read."""
    key = (DeviceVersionWindows.model_name, DeviceVersionWindows.model_version, DeviceVersionWindows.device_class)
    rows = db.exec(select(*key, func.max(DeviceVersionWindows.last_end),
                          func.sum(case((DeviceVersionWindows.last_end >= since, 1), else_=0)))
                   .where(DeviceVersionWindows.role == "active", DeviceVersionWindows.last_end >= horizon)
                   .group_by(*key))
    last: dict[tuple[str, int, str], float] = {}
    devices: dict[tuple[str, int, str], int] = {}
    for n, v, c, end, k in rows:
        last[(n, int(v), c or "")] = float(end)
        devices[(n, int(v), c or "")] = int(k or 0)
    return last, devices


def group_values(db: Session, settings: Any, *, now: float | None = None, lookback_s: float = LOOKBACK_S,
                 max_series: int = MAX_SERIES) -> tuple[dict[tuple[str, int, str], dict[str, Any]], int]:
    """Per (model, version, device class): the values FAMILIES export, and how many groups were dropped."""
    now = time.time() if now is None else now
    since = now - lookback_s
    rows = db.exec(select(Aggregate).where(Aggregate.role == "active", Aggregate.window_start >= since))
    groups: dict[tuple[str, int, str], list[Aggregate]] = defaultdict(list)
    for a in rows:
        groups[(a.model_name, a.model_version, a.device_class)].append(a)
    last, devices = _reporting(db, since, now - LAST_SEEN_HORIZON_S)
    keys = sorted(set(groups) | set(last), key=lambda k: -last.get(k, 0.0))
    kept, dropped = keys[:max_series], max(0, len(keys) - max_series)
    out: dict[tuple[str, int, str], dict[str, Any]] = {}
    for key in kept:
        name, version, cls = key
        vals: dict[str, Any] = {"devices": devices.get(key, 0), "last_window_end": last.get(key)}
        if groups.get(key):
            s = ops_metrics.summarise(groups[key])
            vals.update(requests=s["requests"], error_rate=s["error_rate"])
            if s["latency_samples"]:
                vals.update(p50=s["latency_p50_us"] / 1e6, p99=s["latency_p99_us"] / 1e6)
            vals.update(_drift(db, settings, name, version, cls, since))
            vals.update({k: v for k, v in online_quality(groups[key]).items() if v is not None})
            vals.update(violation_rate(groups[key]))  # issue 15: fleet/drift/data_quality.py
        vals.update(_build_metrics(db, name, version, cls))
        vals.update(_quality(db, name, version, cls, since))
        out[key] = vals
    return out, dropped


def fleet_counts(db: Session) -> tuple[dict[str, int], dict[str, int]]:
    """Rollouts by state (all of them) and open alerts by level."""
    from fleet.rollouts.models import Rollout

    rollouts = {s: int(n) for s, n in db.exec(select(Rollout.status, func.count()).group_by(Rollout.status))}
    open_alerts = {lv: int(n) for lv, n in db.exec(select(DriftAlert.level, func.count())
                                                   .where(DriftAlert.status == "open").group_by(DriftAlert.level))}
    return rollouts, open_alerts


ROLLOUT_STATES = ("running", "paused", "awaiting-approval", "completed", "aborted")
ALERT_LEVELS = ("warn", "alert")


class ModelHealthCollector:
    """A prometheus_client collector over one fleet's database (one per app)."""

    def __init__(self, ctx: Any, lookback_s: float = LOOKBACK_S, max_series: int = MAX_SERIES) -> None:
        self.ctx, self.lookback_s, self.max_series = ctx, lookback_s, max_series

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.ctx.session() as db:
            values, dropped = group_values(db, self.ctx.settings, lookback_s=self.lookback_s,
                                           max_series=self.max_series)
            rollouts, open_alerts = fleet_counts(db)
        for fam in FAMILIES:
            g = GaugeMetricFamily(fam.name, fam.doc, labels=LABELS)
            for (name, version, cls), vals in sorted(values.items()):
                if vals.get(fam.key) is not None:
                    g.add_metric([name, str(version), cls], float(vals[fam.key]))
            yield g
        g = GaugeMetricFamily("edgefleet_model_health_series_dropped",
                              "Model/version/class groups not exported (over the series cap)")
        g.add_metric([], float(dropped))
        yield g
        g = GaugeMetricFamily("edgefleet_rollouts", "Rollouts by state", labels=["state"])
        for state in sorted(set(ROLLOUT_STATES) | set(rollouts)):
            g.add_metric([state], float(rollouts.get(state, 0)))
        yield g
        g = GaugeMetricFamily("edgefleet_alerts_open", "Open (unacknowledged) alerts by level", labels=["level"])
        for level in sorted(set(ALERT_LEVELS) | set(open_alerts)):
            g.add_metric([level], float(open_alerts.get(level, 0)))
        yield g
