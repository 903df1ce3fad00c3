"""Operational metrics: the fleet manager's own Prometheus metrics, and per-version/cohort
device metrics (latency quantiles, error rates, resource use) read from merged aggregates."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from flask import Blueprint, Response, request
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.exposition import choose_encoder

from agent.sketches import LatencyHistogram

INGEST_RECEIVED = Counter("edgefleet_ingest_received_total", "MQTT messages received by ingest", ["kind"])
INGEST_STORED = Counter("edgefleet_ingest_stored_total", "Messages stored", ["kind"])
INGEST_DUPLICATES = Counter("edgefleet_ingest_duplicates_total", "Redelivered messages ignored", ["kind"])
INGEST_DROPPED = Counter("edgefleet_ingest_dropped_total", "Messages dropped", ["reason"])
HTTP_LATENCY = Histogram("edgefleet_http_request_seconds", "HTTP request latency", ["method", "rule", "status"],
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))

bp = Blueprint("ops_metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format; unauthenticated like most exporters (bind it to a private network)."""
    # The format the scraper asks for (Accept), as prometheus_client's own exporter negotiates it.
    # content_type, not mimetype: Flask appends "; charset=utf-8" to a mimetype, the library's type
    # already carries one, and a repeated parameter makes Prometheus (Go's mime.ParseMediaType) refuse it.
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encoder(_Scrape()), content_type=content_type)


class _Scrape:
    """The process's registry plus this app's model health (fleet.drift.model_health), read per scrape."""

    def collect(self) -> Iterator[Any]:
        from fleet.app import fleet_context
        from fleet.drift.model_health import ModelHealthCollector

        yield from REGISTRY.collect()
        ctx = fleet_context()
        collector = ctx.extras.get("model_health")
        if collector is None:
            collector = ctx.extras["model_health"] = ModelHealthCollector(ctx)
        yield from collector.collect()


def observe_request(method: str, rule: str, status: int, seconds: float) -> None:
    HTTP_LATENCY.labels(method, rule, str(status)).observe(max(0.0, seconds))


def summarise(aggregates: Iterable[Any]) -> dict[str, Any]:
    """Latency p50/p99, error rate and mean resources over a set of Aggregate rows (or payloads)."""
    lat = LatencyHistogram()
    requests = errors = 0
    errors_by_kind: dict[str, int] = {}
    res_sum: dict[str, float] = {}
    res_n: dict[str, int] = {}
    res_max: dict[str, float] = {}
    n_windows = 0
    for agg in aggregates:
        p: Mapping[str, Any] = agg.payload if hasattr(agg, "payload") else agg
        lat = lat.merge(LatencyHistogram.from_dict(p.get("latency_us", {})))
        requests += int(p.get("requests", 0))
        for k, v in (p.get("errors") or {}).items():
            errors_by_kind[k] = errors_by_kind.get(k, 0) + int(v)
            errors += int(v)
        for k, v in (p.get("resources_sum") or {}).items():
            res_sum[k] = res_sum.get(k, 0.0) + float(v)
            res_n[k] = res_n.get(k, 0) + int((p.get("resources_n") or {}).get(k, 0))
        for k, v in (p.get("resources_max") or {}).items():
            res_max[k] = max(res_max.get(k, float("-inf")), float(v))
        n_windows += int(p.get("n_windows", 0))
    return {
        "requests": requests, "errors": errors, "errors_by_kind": errors_by_kind,
        "error_rate": (errors / requests) if requests else 0.0,
        "latency_p50_us": lat.quantile(0.5), "latency_p99_us": lat.quantile(0.99),
        "latency_mean_us": (lat.sum_us / lat.total) if lat.total else 0.0, "latency_samples": lat.total,
        "resources_mean": {k: res_sum[k] / res_n[k] for k in res_sum if res_n.get(k)},
        "resources_max": res_max, "n_windows": n_windows,
    }
