"""Merging the field-loop blocks of telemetry (issue 14) into aggregates: the confidence
histogram and the labelled outcomes (confusion matrices or error histograms per slice, and the
confidence calibration). Exact addition, in the agent's own format (docs/telemetry.md), so an
aggregate payload reads like one big telemetry payload: fleet.analytics.merge_payloads, the
Prometheus model health and the console's series read either the same way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _add(a: list[Any], b: list[Any]) -> list[Any] | None:
    return [x + y for x, y in zip(a, b, strict=True)] if len(a) == len(b) else None


def _add_matrix(a: list[list[int]], b: list[list[int]]) -> list[list[int]] | None:
    if len(a) != len(b) or any(len(x) != len(y) for x, y in zip(a, b, strict=True)):
        return None
    return [[int(u) + int(v) for u, v in zip(x, y, strict=True)] for x, y in zip(a, b, strict=True)]


def merge_confidence(acc: dict[str, Any], conf: Any) -> None:
    if not isinstance(conf, Mapping) or not isinstance(conf.get("counts"), list):
        return
    cur = acc.get("confidence")
    if cur is None:
        acc["confidence"] = {"edges": conf.get("edges"), "counts": [int(c) for c in conf["counts"]],
                             "margin_edges": conf.get("margin_edges"),
                             "margin_counts": [int(c) for c in conf.get("margin_counts") or []],
                             "low_threshold": conf.get("low_threshold"), "low": int(conf.get("low", 0) or 0)}
        return
    counts = _add(cur["counts"], [int(c) for c in conf["counts"]])
    if counts is None or cur.get("edges") != conf.get("edges"):
        acc["edge_mismatch"] = int(acc.get("edge_mismatch", 0)) + 1
        return
    cur["counts"] = counts
    cur["margin_counts"] = _add(cur["margin_counts"], [int(c) for c in conf.get("margin_counts") or []]) \
        or cur["margin_counts"]
    cur["low"] += int(conf.get("low", 0) or 0)


def merge_outcomes(acc: dict[str, Any], out: Any) -> None:
    if not isinstance(out, Mapping) or out.get("kind") not in ("class", "value"):
        return
    cur = acc.get("outcomes")
    if cur is None:
        cur = acc["outcomes"] = {"kind": out["kind"], "labelled": 0, "invalid": 0, "slices": {}}
        for k in ("n_classes", "error_edges", "calibration"):
            if k in out:
                cur[k] = {**out[k], "n": [0] * len(out[k]["n"]), "correct": [0] * len(out[k]["n"])} \
                    if k == "calibration" else out[k]
    if cur["kind"] != out["kind"]:
        return
    cur["labelled"] += int(out.get("labelled", 0) or 0)
    cur["invalid"] += int(out.get("invalid", 0) or 0)
    for key, s in (out.get("slices") or {}).items():
        mine = cur["slices"].get(key)
        if mine is None:
            cur["slices"][key] = {k: (v if not isinstance(v, list) else [list(r) if isinstance(r, list) else r
                                                                           for r in v]) for k, v in s.items()}
        elif "confusion" in s:
            merged = _add_matrix(mine["confusion"], s["confusion"])
            if merged is not None:
                mine["confusion"], mine["n"] = merged, int(mine.get("n", 0)) + int(s.get("n", 0))
        elif "counts" in s and _add(mine["counts"], s["counts"]) is not None:
            mine["counts"] = _add(mine["counts"], s["counts"])
            mine["n"] = int(mine.get("n", 0)) + int(s.get("n", 0))
            for k in ("abs_error_sum", "sq_error_sum"):
                mine[k] = float(mine.get(k, 0.0)) + float(s.get(k, 0.0))
    cal, mine_cal = out.get("calibration"), cur.get("calibration")
    if isinstance(cal, Mapping) and isinstance(mine_cal, Mapping) and len(cal.get("n", ())) == len(mine_cal["n"]):
        mine_cal["n"] = _add(mine_cal["n"], [int(v) for v in cal["n"]])
        mine_cal["correct"] = _add(mine_cal["correct"], [int(v) for v in cal["correct"]])


DQ_KINDS = ("missing", "out_of_range", "unknown_category")  # agent.features.VIOLATION_KINDS
DQ_MAX_FEATURES = 512


def merge_data_quality(acc: dict[str, Any], dq: Any) -> None:
    """Add raw-input schema violations per feature ({feature: {kind: count}}, issue 15): known kinds,
    bounded names and counts only, so a bad block cannot grow the aggregate."""
    if not isinstance(dq, Mapping):
        return
    cur = acc.setdefault("data_quality", {})
    for name, kinds in dq.items():
        if not isinstance(name, str) or len(name) > 128 or not isinstance(kinds, Mapping) or (
                name not in cur and len(cur) >= DQ_MAX_FEATURES):
            continue
        for kind in DQ_KINDS:
            n = kinds.get(kind)
            if isinstance(n, int) and not isinstance(n, bool) and 0 < n < 2**62:
                slot = cur.setdefault(name, {})
                slot[kind] = int(slot.get(kind, 0)) + n


def merge_quality(acc: dict[str, Any], p: Mapping[str, Any]) -> None:
    """Fold a telemetry (or aggregate) payload's confidence, outcomes and data quality into `acc`."""
    merge_confidence(acc, p.get("confidence"))
    merge_outcomes(acc, p.get("outcomes"))
    merge_data_quality(acc, p.get("data_quality"))
