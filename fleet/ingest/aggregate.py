"""The one merge of telemetry payloads: exact addition of histograms on shared bin edges.

`merge_into(acc, payload)` folds one verified telemetry payload into an aggregate payload (ingest,
per window key); `merge_many` adds a batch; `sum_histograms` adds only the feature and prediction
histograms (drift reads and rollout evidence). Whether two payloads' histograms may be added is
decided in one place, agent.window_payload.layout_of (feature names, edge hashes, bin counts):
payloads on other edges are not added but counted (`edge_mismatch`, `skipped`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import reduce
from itertools import chain
from operator import add, itemgetter, methodcaller
from typing import Any, NamedTuple

import numpy as np

from agent.window_payload import Layout, WireCounts, layout_of

RESOURCE_KEYS = ("cpu_percent", "rss_mb", "mem_percent", "temp_c")


def empty() -> dict[str, Any]:
    return {"n_windows": 0, "requests": 0, "sampled": 0, "errors": {}, "devices": 0,
            "latency_us": {"growth": 1.1, "min_us": 1.0, "buckets": {}, "sum_us": 0.0},
            "resources_sum": {}, "resources_n": {}, "resources_max": {},
            "features": None, "prediction": None, "shadow": {"compared": 0, "agreed": 0},
            "dropped_windows": 0, "edge_mismatch": 0}


def merge_into(acc: dict[str, Any], p: Mapping[str, Any]) -> dict[str, Any]:
    """Add telemetry payload (or another aggregate payload) `p` to `acc` in place; returns acc."""
    _merge_scalars(acc, [p])
    _merge_histograms(acc, p)
    return acc


def _merge_scalars(acc: dict[str, Any], ps: Sequence[Mapping[str, Any]]) -> None:
    """Everything but the feature and prediction histograms, of telemetry or aggregate payloads:
    the same sums (floats folded in payload order), maxima and key order as adding the payloads
    one by one."""
    aggregates = any("n_windows" in p for p in ps)
    readings: dict[str, list[float]] = {}  # telemetry resources: numbers per key, keys in first-seen order
    _fold(acc, ps, None if aggregates else readings)
    if aggregates:
        for p in ps:  # aggregates carry resource sums, counts and maxima: payload by payload
            _merge_resources(acc, p)
    else:
        _add_readings(acc, readings)
    for p in ps:
        if "confidence" in p or "outcomes" in p or "data_quality" in p:  # field loop (issue 14), data quality (15)
            from fleet.ingest.aggregate_quality import merge_quality

            merge_quality(acc, p)


def _fold(acc: dict[str, Any], ps: Sequence[Mapping[str, Any]], readings: dict[str, list[float]] | None) -> None:
    """Counts, errors, latency, shadow (and telemetry resource readings into `readings`) in one
    pass, a payload at a time: no per-field lists, iterators and method callers, about a fifth
    cheaper for ingest's windows than a C-level pass per field over the batch."""
    n_windows = devices = requests = sampled = dropped = mismatch = 0
    errors, lat, shadow = acc["errors"], acc["latency_us"], acc["shadow"]
    buckets = lat["buckets"]
    sum_us = float(lat["sum_us"])
    for p in ps:
        get = p.get  # a telemetry payload lacks n_windows and devices: it is one window of one device
        n_windows += int(get("n_windows", 1))
        devices += int(get("devices", 1))
        requests += int(get("requests", 0))
        sampled += int(get("sampled", 0))
        dropped += int(get("dropped_windows", 0))
        mismatch += int(get("edge_mismatch", 0))
        for k, v in (get("errors") or _NONE).items():  # sparse counts: new keys appended in their order
            try:
                errors[k] += int(v)
            except KeyError:
                errors[k] = int(v)
        q = get("latency_us") or _NONE
        for k, v in (q.get("buckets") or _NONE).items():
            try:
                buckets[k] += int(v)
            except KeyError:
                buckets[k] = int(v)
        sum_us += float(q.get("sum_us", 0.0))
        if readings is not None:
            _collect_readings(readings, get("resources"))
        sh = get("shadow")
        if sh is not None and (type(sh) is dict or isinstance(sh, Mapping)):
            shadow["compared"] += int(sh.get("compared", 0))
            shadow["agreed"] += int(sh.get("agreed", 0))
    acc["n_windows"] += n_windows
    acc["devices"] += devices
    acc["requests"] += requests
    acc["sampled"] += sampled
    acc["dropped_windows"] += dropped
    acc["edge_mismatch"] += mismatch
    lat["sum_us"] = sum_us


def _merge_resources(acc: dict[str, Any], p: Mapping[str, Any]) -> None:
    if "n_windows" not in p:
        readings: dict[str, list[float]] = {}
        _collect_readings(readings, p.get("resources"))
        _add_readings(acc, readings)
        return
    for k, v in (p.get("resources_sum") or {}).items():
        acc["resources_sum"][k] = acc["resources_sum"].get(k, 0.0) + float(v)
        acc["resources_n"][k] = acc["resources_n"].get(k, 0) + int(p["resources_n"].get(k, 0))
    for k, v in (p.get("resources_max") or {}).items():
        acc["resources_max"][k] = max(acc["resources_max"].get(k, float("-inf")), float(v))


def _collect_readings(into: dict[str, list[float]], res: Any) -> None:
    """A device's resource readings (numbers only; bools and anything else are not readings)."""
    if not res or not (type(res) is dict or isinstance(res, Mapping)):
        return
    for k, v in res.items():
        vs = into.get(k)
        if vs is None:
            vs = into[k] = []
        if type(v) is float or (isinstance(v, _NUMBER) and not isinstance(v, bool)):
            vs.append(float(v))


def _add_readings(acc: dict[str, Any], readings: dict[str, list[float]]) -> None:
    """Devices' readings into the resource sums, counts and maxima, a key at a time in first-seen order."""
    for k, vs in readings.items():
        if vs:
            acc["resources_sum"][k] = reduce(add, vs, acc["resources_sum"].get(k, 0.0))
            acc["resources_n"][k] = acc["resources_n"].get(k, 0) + len(vs)
            acc["resources_max"][k] = max(acc["resources_max"].get(k, float("-inf")), *vs)


def _merge_histograms(acc: dict[str, Any], p: Mapping[str, Any]) -> None:
    """Add p's histograms to acc's with the one merge (sum_histograms); on another layout they are
    counted in edge_mismatch and left out."""
    if not (p.get("features") or p.get("prediction")):
        return
    if acc["features"] is None and acc["prediction"] is None:
        hs = sum_histograms([p])
    else:
        hs = sum_histograms([{"features": acc["features"], "prediction": acc["prediction"]}, p])
    if hs.skipped:
        acc["edge_mismatch"] += hs.skipped
        return
    acc["features"], acc["prediction"] = hs.features, hs.prediction


Hist = WireCounts  # a payload's histograms flattened once (by the one shape check) for merge_many


def hist_of(p: Mapping[str, Any]) -> Hist:
    feats = p.get("features") or []
    return Hist(layout_of(feats), list(chain.from_iterable(map(_COUNTS, feats))), list(map(_NAN, feats)))


_COUNTS, _NAN = itemgetter("counts"), methodcaller("get", "nan", 0)
_NUMBER = (int, float)
_NONE: Mapping[str, Any] = {}


def merge_many(payloads: Sequence[Mapping[str, Any]], hists: Sequence[Hist] | None = None) -> dict[str, Any]:
    """merge_all for telemetry payloads (ingest): the histograms are added column by column over
    the flattened counts (`hists`, aligned with `payloads`, saves flattening them again).
    Payloads whose layout differs from the first one's are counted in edge_mismatch."""
    acc = empty()
    _merge_scalars(acc, payloads)
    hs = sum_histograms(payloads, hists)
    acc["edge_mismatch"] += hs.skipped
    acc["features"], acc["prediction"] = hs.features, hs.prediction
    return acc


class HistSum(NamedTuple):
    features: list[dict[str, Any]] | None   # wire form: name, edges_hash, counts, nan
    prediction: dict[str, Any] | None
    added: int                               # payloads added
    skipped: int                             # payloads with histograms on another layout


def sum_histograms(payloads: Sequence[Mapping[str, Any]], hists: Sequence[Hist] | None = None, *,
                   layout: Layout | None = None, prediction_size: int | None = None) -> HistSum:
    """Add the feature and prediction histograms of payloads that share `layout` (default: the
    first payload's) and, when there is one, a prediction of `prediction_size` bins. Ingest passes
    `hists` (flattened by its checks); reads of thousands of stored payloads go through numpy."""
    with_hist = [i for i, p in enumerate(payloads) if p.get("features") or p.get("prediction")]
    if not with_hist:
        return HistSum(None, None, 0, 0)
    layouts = [h.layout for h in hists] if hists is not None else [
        layout_of(p.get("features") or ()) for p in payloads]
    pred0 = payloads[with_hist[0]].get("prediction")
    want = layouts[with_hist[0]] if layout is None else layout
    pred_size = (len(pred0["counts"]) if pred0 else 0) if prediction_size is None else prediction_size
    pred_hash = pred0.get("edges_hash") if pred0 and layout is None else None
    good = [i for i in with_hist if layouts[i] == want and (pred_size == 0 or _same_prediction(
        payloads[i].get("prediction"), pred_size, pred_hash))]
    names, hashes, sizes = want
    feats = None
    if names and good:
        if hists is not None:
            sums = _column_sums([hists[i].counts for i in good]) if sum(sizes) else []
            nan = _column_sums([hists[i].nan for i in good])
        elif len(good) < 64:   # a few payloads (ingest folding a batch into a stored aggregate)
            sums = _column_sums([list(chain.from_iterable(map(_COUNTS, payloads[i]["features"]))) for i in good])
            nan = _column_sums([list(map(_NAN, payloads[i]["features"])) for i in good])
        else:
            rows = [payloads[i]["features"] for i in good]
            sums = _numpy_sums((chain.from_iterable(map(_COUNTS, r)) for r in rows), len(rows), sum(sizes))
            nan = _numpy_sums((map(_NAN, r) for r in rows), len(rows), len(sizes))
        feats, at = [], 0
        for n, eh, size, k in zip(names, hashes, sizes, nan, strict=True):
            feats.append({"name": n, "edges_hash": eh, "counts": sums[at:at + size], "nan": int(k)})
            at += size
    pred = None
    if pred_size and good:
        first = payloads[good[0]]["prediction"]
        pred = {**dict(first), "counts": _column_sums([payloads[i]["prediction"]["counts"] for i in good]),
                "nan": sum(int(payloads[i]["prediction"].get("nan", 0)) for i in good)}
    return HistSum(feats, pred, len(good), len(with_hist) - len(good))


def _same_prediction(pred: Any, size: int, edges_hash: str | None) -> bool:
    return (type(pred) is dict or isinstance(pred, Mapping)) and len(pred["counts"]) == size and (
        edges_hash is None or pred.get("edges_hash") == edges_hash)


def _numpy_sums(rows: Iterable[Iterable[int]], n: int, width: int) -> list[int]:
    """Column sums of n rows of `width` counts, read once into one int64 matrix."""
    if not width:
        return []
    flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=n * width)
    return [int(x) for x in flat.reshape(n, width).sum(axis=0)]


def _column_sums(rows: list[list[int]]) -> list[int]:
    """Exact (Python int) sums of equally long rows; faster than numpy's conversion of them."""
    return list(map(sum, zip(*rows, strict=True)))


def merge_all(payloads: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    acc = empty()
    for p in payloads:
        merge_into(acc, p)
    return acc


def cohort_of(attributes: Mapping[str, Any] | None, keys: Iterable[str]) -> str:
    """Cohort label from device attributes, e.g. 'region=eu'; 'all' when none of the keys is set."""
    attributes = attributes or {}
    if attributes.get("cohort"):
        return str(attributes["cohort"])
    parts = [f"{k}={attributes[k]}" for k in keys if attributes.get(k) not in (None, "")]
    return ",".join(parts) or "all"
