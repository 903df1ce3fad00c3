"""Model cards per version (issue 16), generated from what the fleet already knows: the owner,
status and reviews (fleet.catalogue.lifecycle, fleet.catalogue.reviews), the manifests of the version's builds
(build metrics, per-slice results, importance when the compiler recorded it (the manifest's
`explain` section, summarised by fleet.catalogue.explain_view), lineage and the
training run in provenance), and the field telemetry per device class and cohort. One dict,
rendered as Markdown (CLI, API) or HTML (console, templates_lifecycle/lifecycle/card.html).

Intended use and known limitations come from the training-run metadata (`edgefleet compile
--training-run`: `intended_use`, `limitations`) or a manifest `card` object; a card says so
plainly when they were never documented."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlmodel import Session, select

from fleet import ops_metrics
from fleet.catalogue import lifecycle, reviews
from fleet.catalogue import versions as catalogue
from fleet.catalogue.card_markdown import to_markdown  # noqa: F401  (re-exported: the API renders with it)
from fleet.catalogue.explain_view import explain_summary
from fleet.models import Aggregate, ModelOwner, ModelReview, ModelVersion

NOT_DOCUMENTED = "not documented (add it to the training-run file given to `edgefleet compile --training-run`)"


def _doc(manifests: list[dict[str, Any]], key: str) -> Any:
    for m in manifests:
        prov = m.get("provenance") or {}
        for src in (m.get("card") or {}, prov.get("training") or {}):
            if src.get(key):
                return src[key]
    return None


def build_card(db: Session, name: str, version: int) -> dict[str, Any]:
    builds = list(db.exec(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
                          .order_by(ModelVersion.device_class)))
    if not builds:
        raise lifecycle.LifecycleError(404, "not-found", f"no {name} v{version}")
    manifests = [b.manifest or {} for b in builds]
    status = lifecycle.status_view(name, version, lifecycle.status_of(db, name, version))
    owner = lifecycle.owner_view(db.get(ModelOwner, name), name)
    aggs = list(db.exec(select(Aggregate).where(Aggregate.model_name == name, Aggregate.model_version == version,
                                                Aggregate.role == "active")))
    by_class: dict[str, list[Aggregate]] = defaultdict(list)
    by_cohort: dict[str, list[Aggregate]] = defaultdict(list)
    for a in aggs:
        by_class[a.device_class].append(a)
        by_cohort[a.cohort or "(none)"].append(a)
    training = next(((m.get("provenance") or {}).get("training") for m in manifests
                     if (m.get("provenance") or {}).get("training")), None)
    data_refs = sorted({f"{k}={v}" for m in manifests for k, v in (m.get("provenance") or {}).items()
                        if ("dataset" in k or "data" in k) and isinstance(v, (str, int))})
    if training:
        data_refs += [f"{k}={v}" for k, v in sorted((training.get("data_versions") or {}).items())]
    rv = [reviews.review_view(r) for r in db.exec(select(ModelReview).where(ModelReview.name == name)
                                                  .order_by(ModelReview.at.desc()))]
    return {
        "model": name, "version": version, "status": status, "owner": owner,
        "intended_use": _doc(manifests, "intended_use") or NOT_DOCUMENTED,
        "limitations": _doc(manifests, "limitations") or NOT_DOCUMENTED,
        "data_references": data_refs,
        "training_run": training,
        "builds": [{"device_class": b.device_class, "format": b.format, "precision": b.precision, "size": b.size,
                    "bundle_sha256": b.bundle_sha256, "signed_by": b.signed_by, "uploaded_at": b.created_at,
                    "uploaded_by": b.uploaded_by} for b in builds],
        "build_metrics": {b.device_class: _scalars((b.manifest or {}).get("metrics") or {}) for b in builds},
        "slices": {b.device_class: {"slices": ((b.manifest or {}).get("metrics") or {}).get("slices") or {},
                                    "reference": ((b.manifest or {}).get("metrics") or {}).get("reference_slices")
                                    or {}} for b in builds},
        "importance": next((ex for ex in (explain_summary(m) for m in manifests) if ex), None),  # issue 15
        "field_metrics": {"by_device_class": {c: _field(v) for c, v in sorted(by_class.items())},
                          "by_cohort": {c: _field(v) for c, v in sorted(by_cohort.items())}},
        "lineage": catalogue.lineage(manifests[0]),
        "reviews": rv,
        "review_schedule": reviews.state_of(db, name).to_dict(),
    }


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}


def _field(aggs: list[Aggregate]) -> dict[str, Any]:
    s = ops_metrics.summarise(aggs)
    return {"requests": s["requests"], "error_rate": s["error_rate"], "latency_p50_ms": s["latency_p50_us"] / 1000,
            "latency_p99_ms": s["latency_p99_us"] / 1000, "windows": len(aggs)}


def _flat(card: dict[str, Any]) -> dict[tuple[str, str], Any]:
    """(section, key) -> value over the comparable parts of a card (first build's class for
    build metrics and slices, every cohort for field results)."""
    out: dict[tuple[str, str], Any] = {("status", "status"): card["status"]["status"]}
    first = next(iter(card["build_metrics"]), None)
    for k, v in (card["build_metrics"].get(first) or {}).items():
        out[("build metrics", k)] = v
    for k, v in ((card["slices"].get(first) or {}).get("slices") or {}).items():
        out[("slices", k)] = v
    for c, f in card["field_metrics"]["by_cohort"].items():
        out[("field", f"{c} requests")] = f["requests"]
        out[("field", f"{c} error rate")] = round(f["error_rate"], 6)
        out[("field", f"{c} p99 ms")] = round(f["latency_p99_ms"], 3)
    out[("lineage", "parent")] = card["lineage"].get("parent")
    out[("lineage", "passes")] = " -> ".join(card["lineage"].get("passes") or [])
    for x in card["lineage"].get("facts") or []:
        if not x["key"].startswith(("training.", "device_class.", "parent_bundle.")) and x["key"] != "cache_key":
            out[("lineage", x["key"])] = x["value"]
    for k, v in (card.get("training_run") or {}).items():
        out[("training", k)] = v if not isinstance(v, dict) else ", ".join(f"{a}={b}" for a, b in sorted(v.items()))
    return out


def diff_rows(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for a side-by-side comparison; `differs` marks what changed between the versions."""
    fa, fb = _flat(a), _flat(b)
    keys = sorted(set(fa) | set(fb), key=lambda k: (["status", "build metrics", "slices", "field", "lineage",
                                                     "training"].index(k[0]), k[1]))
    return [{"section": s, "key": k, "a": fa.get((s, k)), "b": fb.get((s, k)),
             "differs": fa.get((s, k)) != fb.get((s, k))} for s, k in keys]
