"""The model page's side-by-side comparison: one column per version with its rollout state
(paused and rolled-back versions marked), its builds per device class with sizes in units, its
compile metrics, and fleet telemetry that really is per device class."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlmodel import Session, func, select

from fleet import ops_metrics
from fleet.catalogue import lifecycle
from fleet.drift import data_quality
from fleet.models import Aggregate, Device, ModelVersion
from fleet.rollouts.models import Rollout

MARKS = {"paused": ("alert", "‖ paused rollout"), "rolled-back": ("alert", "↩ rolled back"),
         "aborted": ("warn", "■ rollout aborted"), "running": ("ok", "▶ rolling out"),
         "awaiting-approval": ("warn", "… awaiting approval"), "completed": ("ok", "✓ rolled out")}


def human_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def compare(db: Session, name: str, versions: list[ModelVersion]) -> list[dict[str, Any]]:
    """Newest first: {version, mark, lifecycle, builds: [{class, format, precision, size}],
    metrics, devices, perf: {class: summary}, data_quality: raw-input violations per feature}."""
    by_v: dict[int, list[ModelVersion]] = defaultdict(list)
    for mv in versions:
        by_v[mv.version].append(mv)
    last_ids = db.exec(select(func.max(Rollout.id)).where(Rollout.model_name == name)
                       .group_by(Rollout.version)).all()
    latest: dict[int, Rollout] = {r.version: r for r in db.exec(select(Rollout).where(Rollout.id.in_(last_ids)))}
    installed = dict(db.exec(select(Device.installed_version, func.count()).where(
        Device.installed_name == name, Device.status == "active").group_by(Device.installed_version)).all())
    perf: dict[tuple[int, str], list[Any]] = defaultdict(list)
    for a in db.exec(select(Aggregate).where(Aggregate.model_name == name, Aggregate.role == "active")
                     .order_by(Aggregate.window_start.desc()).limit(5000)).all():
        perf[(a.model_version, a.device_class)].append(a)
    cols = []
    for v in sorted(by_v, reverse=True):
        r = latest.get(v)
        mark = MARKS.get(r.status) if r is not None else None
        metrics: dict[str, Any] = {}
        for mv in by_v[v]:
            for k, val in ((mv.manifest or {}).get("metrics") or {}).items():
                if isinstance(val, (int, float)) and not isinstance(val, bool):
                    metrics.setdefault(k, val)
        cols.append({
            "version": v, "rollout": r.id if r is not None else None, "rollout_status": r.status if r else None,
            "mark_class": mark[0] if mark else "", "mark": mark[1] if mark else "",
            "lifecycle": lifecycle.status_name(db, name, v),
            "builds": [{"device_class": mv.device_class, "format": mv.format, "precision": mv.precision,
                        "size": human_bytes(mv.size), "bytes": mv.size} for mv in by_v[v]],
            "metrics": metrics, "devices": int(installed.get(v, 0)),
            "perf": {cls: ops_metrics.summarise(rows) for (pv, cls), rows in sorted(perf.items()) if pv == v},
            "data_quality": data_quality.summarise(a.payload or {} for (pv, _), rows in perf.items() if pv == v
                                                   for a in rows),
        })
    return cols
