"""What each version relies on, for the catalogue API and the console (issue 15 item 3).

The manifest's `explain` section (compiler/explain.py) is summarised per version; the console's
model page pivots it into one table: top features by importance per version and the change from
the previous version, so "v7 now leans on feature X" is visible before a rollout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

TOP = 10
SLICE_TOP = 5  # features kept per slice in the summary: the ones that decide that slice


def explain_summary(manifest: Mapping[str, Any] | None, top: int = TOP) -> dict[str, Any] | None:
    """The version's importance (top features), method, metric and slices; None when not built."""
    ex = (manifest or {}).get("explain")
    if not isinstance(ex, Mapping):
        return None
    if ex.get("error"):
        return {"error": ex["error"]}
    out: dict[str, Any] = {"method": ex.get("method"), "metric": ex.get("metric"),
                           "baseline_metric": ex.get("baseline_metric"), "repeats": ex.get("repeats"),
                           "rows": ex.get("rows"), "importance": list(ex.get("importance") or [])[:top],
                           "slices": sorted((ex.get("slices") or {}).keys()),
                           "slice_importance": {k: {"rows": v.get("rows"), "baseline_metric": v.get("baseline_metric"),
                                                    "importance": list(v.get("importance") or [])[:SLICE_TOP]}
                                                for k, v in sorted((ex.get("slices") or {}).items())
                                                if isinstance(v, Mapping)}}
    if ex.get("feature_kind") == "raw":  # a raw-input bundle: features are the raw ones, by name
        out["feature_kind"] = "raw"
    if ex.get("integrated_gradients"):
        out["integrated_gradients"] = list(ex["integrated_gradients"])[:top]
    return out


def importance_table(views: Sequence[Mapping[str, Any]], top: int = TOP) -> dict[str, Any] | None:
    """{versions: [newest..], rows: [{feature, values: [per version], delta}]} from version views
    (catalogue.version_view); delta is newest minus the version before it."""
    by_version: dict[int, dict[str, float]] = {}
    for v in views:
        ex = v.get("explain") or {}
        if ex.get("importance") and int(v["version"]) not in by_version:
            by_version[int(v["version"])] = {r["feature"]: float(r["importance"]) for r in ex["importance"]}
    if not by_version:
        return None
    versions = sorted(by_version, reverse=True)
    newest = by_version[versions[0]]
    prev = by_version[versions[1]] if len(versions) > 1 else None
    features = list(dict.fromkeys(sorted(newest, key=lambda f: -newest[f])[:top]
                                  + (sorted(prev, key=lambda f: -prev[f])[:3] if prev else [])))
    rows = [{"feature": f, "values": [by_version[v].get(f) for v in versions],
             "delta": None if prev is None else round(newest.get(f, 0.0) - prev.get(f, 0.0), 6)} for f in features]
    newest_view = next(v for v in views if int(v["version"]) == versions[0])
    return {"versions": versions, "rows": rows, "slices": slice_table(newest_view, newest)}


def slice_table(view: Mapping[str, Any], overall: Mapping[str, float]) -> dict[str, Any] | None:
    """The newest version's importance per slice: {version, slices: [{name, rows, metric}], rows:
    [{feature, overall, values: [per slice]}]}, features = the union of each slice's top ones, so a
    slice that leans on a feature the fleet as a whole ignores stands out."""
    per = (view.get("explain") or {}).get("slice_importance") or {}
    if not per:
        return None
    names = list(per)
    tops = {n: {r["feature"]: float(r["importance"]) for r in per[n].get("importance") or []} for n in names}
    features = list(dict.fromkeys([f for n in names for f in tops[n]]))
    features.sort(key=lambda f: -max(tops[n].get(f, 0.0) for n in names))
    return {"version": int(view["version"]),
            "slices": [{"name": n, "rows": per[n].get("rows"), "metric": per[n].get("baseline_metric")} for n in names],
            "rows": [{"feature": f, "overall": overall.get(f), "values": [tops[n].get(f) for n in names]}
                     for f in features[:TOP]]}
