"""A model card (fleet.catalogue.model_card's dict) as Markdown. Pure Python, no fleet dependencies, so
the operator CLI (`edgefleet models card`) renders the same text as the API without the fleet
extra installed."""

from __future__ import annotations

import time
from typing import Any


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
    out += ["", "## Importance", ""] + _importance(card.get("importance"))
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


def _importance(ex: dict[str, Any] | None) -> list[str]:
    """The manifest's `explain` summary (fleet.catalogue.explain_view.explain_summary): top features."""
    if not ex:
        return ["_not computed at build (compile with explain enabled)_"]
    if ex.get("error"):
        return [f"_not available: {_fmt(ex['error'])}_"]
    head = [f"{ex.get('method') or 'permutation'} importance: drop in {ex.get('metric') or 'the metric'}"
            f" (baseline {_fmt(ex.get('baseline_metric'))}, {ex.get('rows')} rows, {ex.get('repeats')} repeats)", ""]
    return head + _table(["feature", "importance", "std"], [[r["feature"], r["importance"], r.get("std", "—")]
                                                          for r in ex.get("importance") or []])


def _date(ts: float | None) -> str:
    return "—" if not ts else time.strftime("%Y-%m-%d", time.gmtime(ts))
