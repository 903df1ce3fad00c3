"""Model cards per version (issue 16), generated from what the fleet already knows: the owner,
status and reviews (fleet.lifecycle, fleet.reviews), the manifests of the version's builds
(build metrics, per-slice results, importance when the compiler recorded it, lineage and the
training run in provenance), and the field telemetry per device class and cohort. One dict,
rendered as Markdown (CLI, API) or HTML (console, templates_lifecycle/lifecycle/card.html).

Intended use and known limitations come from the training-run metadata (`edgefleet compile
--training-run`: `intended_use`, `limitations`) or a manifest `card` object; a card says so
plainly when they were never documented."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlmodel import Session, select

from fleet import catalogue, lifecycle, ops_metrics, reviews
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
        "importance": next(((m.get("metrics") or {}).get("importance") for m in manifests
                            if (m.get("metrics") or {}).get("importance")), None),
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


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    if not rows:
        return ["_none_"]
    return (["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
            + ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows])


def to_markdown(card: dict[str, Any]) -> str:
    o, st, lin = card["owner"], card["status"], card["lineage"]
    out = [f"# Model card: {card['model']} v{card['version']}", "",
           f"**Status:** {st['status']}" + (f" — {st['reason']} ({st['changed_by']})" if st.get("reason") else ""), "",
           "## Intended use and owner", "", str(card["intended_use"]), "",
           f"- Owner: {o['team'] or 'not set'}" + (f" ({o['contact']})" if o.get("contact") else ""),
           f"- On-call: {o['oncall'] or 'not set'}",
           f"- Review every {card['review_schedule']['interval_days']} days; next due "
           f"{_date(card['review_schedule']['due_at'])}" + (" — **OVERDUE**" if card["review_schedule"]["overdue"]
                                                           else ""), "",
           "## Data references", ""]
    out += [f"- {d}" for d in card["data_references"]] or ["_none recorded_"]
    tr = card.get("training_run") or {}
    if tr:
        out += ["", "## Training run", ""]
        out += [f"- {k}: {_fmt(v)}" for k, v in sorted(tr.items()) if not isinstance(v, dict)]
        out += [f"- hyperparameters: {', '.join(f'{k}={_fmt(v)}' for k, v in sorted(tr['hyperparameters'].items()))}"
                ] if isinstance(tr.get("hyperparameters"), dict) else []
    out += ["", "## Builds", ""] + _table(["device class", "format", "precision", "bytes", "bundle", "signed by"],
                                          [[b["device_class"], b["format"], b["precision"], b["size"],
                                            b["bundle_sha256"][:12], b["signed_by"]] for b in card["builds"]])
    keys = sorted({k for m in card["build_metrics"].values() for k in m})
    out += ["", "## Metrics at build", ""] + _table(["metric"] + list(card["build_metrics"]),
                                                    [[k] + [m.get(k, "—") for m in card["build_metrics"].values()]
                                                     for k in keys])
    rows = [[cls, s, v, sl["reference"].get(s, "—")] for cls, sl in card["slices"].items()
            for s, v in sorted(sl["slices"].items())]
    out += ["", "## Per-slice results", ""] + _table(["device class", "slice", "score", "reference"], rows)
    if card.get("importance"):
        out += ["", "## Importance", ""] + [f"- {k}: {_fmt(v)}" for k, v in card["importance"].items()]
    for title, key in (("device class", "by_device_class"), ("cohort", "by_cohort")):
        f = card["field_metrics"][key]
        out += ["", f"## Metrics in the field, by {title}", ""] + _table(
            [title, "requests", "error rate", "p50 ms", "p99 ms", "windows"],
            [[k, v["requests"], v["error_rate"], v["latency_p50_ms"], v["latency_p99_ms"], v["windows"]]
             for k, v in f.items()])
    out += ["", "## Lineage", "", f"- parent: {lin.get('parent') or '—'}",
            f"- passes: {' → '.join(lin.get('passes') or []) or '—'}"]
    out += [f"- {x['key']}: {_fmt(x['value'])}" for x in lin.get("facts") or []]
    out += ["", "## Review history", ""] + _table(["when", "reviewer", "decision", "version", "notes"],
                                                  [[_date(r["at"]), r["reviewer"], r["decision"],
                                                    r["version"] if r["version"] is not None else "—", r["notes"]]
                                                   for r in card["reviews"]])
    out += ["", "## Known limitations", "", str(card["limitations"]), ""]
    return "\n".join(out)


def _date(ts: float | None) -> str:
    import time

    return "—" if not ts else time.strftime("%Y-%m-%d", time.gmtime(ts))
