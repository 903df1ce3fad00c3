"""Build reports: a rich table for people, a JSON document for CI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compiler.pipeline import BuildResult


def json_report(results: list[BuildResult]) -> dict[str, Any]:
    return {"schema": "edgefleet.compile-report/v1", "passed": all(r.passed for r in results),
            "failed_gates": sorted({g for r in results for g in r.failed_gates}),
            "builds": [r.to_dict() for r in results]}


def write_json_report(path: Path, results: list[BuildResult]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_report(results), indent=2, sort_keys=True) + "\n")


def _fmt(x: Any, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def print_report(results: list[BuildResult], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if Console().is_terminal else 160)
    table = Table(title="edgefleet compile")
    for col in ("device class", "format", "precision", "metric", "drop", "agreement", "worst slice",
                "gap +", "size MB", "p50 ms", "p99 ms", "result"):
        table.add_column(col, justify="right" if col not in ("device class", "format", "result") else "left")
    for r in results:
        m = r.metrics
        metric = f"{m.get('metric_name', '')} {_fmt(m.get('metric'))}" if m else "-"
        status = "[green]PASS[/green]" if r.passed else f"[red]FAIL {', '.join(r.failed_gates)}[/red]"
        if r.cached:
            status += " (cached)"
        table.add_row(r.device_class, r.format, r.precision, metric, _fmt(m.get("drop")),
                      _fmt(m.get("agreement")), str(m.get("worst_slice") or "-"), _fmt(m.get("slice_gap_increase")),
                      _fmt(r.size_bytes / 2**20, 3), _fmt(r.latency.get("p50_ms"), 3),
                      _fmt(r.latency.get("p99_ms"), 3), status)
    console.print(table)
    for r in results:
        for g in r.gates:
            if not g["passed"]:
                console.print(f"[red]{r.device_class}: gate {g['gate']} failed[/red]: {g['detail']}")
        for c in r.candidates:
            if c.get("error"):
                console.print(f"[red]{r.device_class}: FAIL {r.format} {c['precision']}[/red]: {c['error']}")
        if r.latency.get("on_target") is False:
            console.print(f"{r.device_class}: latency {r.latency.get('note', 'not measured on target')}")
        elif r.latency.get("note"):  # --profile-on: measured on device <id>
            console.print(f"{r.device_class}: latency {r.latency['note']}")
        if len(r.candidates) > 1:
            tried = ", ".join(f"{c['precision']}={'pass' if c['passed'] else 'fail'}"
                              f"({c['latency_p50_ms']:.3f} ms)" for c in r.candidates)
            console.print(f"{r.device_class}: precision auto tried {tried}; kept {r.precision}")
        if r.distillation:
            d = r.distillation
            console.print(f"distillation: teacher acc {_fmt(d['teacher_accuracy'])} ({d['teacher_params']} params), "
                          f"student acc {_fmt(d['student_accuracy'])} ({d['student_params']} params)")
        if r.bundle_path:
            console.print(f"{r.device_class}: bundle {r.bundle_path}")
