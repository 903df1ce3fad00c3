"""What the operator CLI prints: aligned tables with a header for people, JSON for scripts.

`--json` prints the API's own response body (sorted keys, two-space indent), so a script reads the
same documented fields the REST API returns (wave `index` stays 0-based there, as in the API);
tables number waves from 1, as the console does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import click

Row = Sequence[Any]


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ",".join(cell(v) for v in value) or "-"
    if isinstance(value, Mapping):
        return " ".join(f"{k}={cell(v)}" for k, v in value.items()) or "-"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Row], *, right: Iterable[str] = ()) -> str:
    """Columns padded to their widest cell; headers upper-case; `right` columns right-aligned;
    the last column is not padded (long summaries do not push the table width)."""
    body = [[cell(v) for v in r] for r in rows]
    heads = [h.upper() for h in headers]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(heads)]
    align_right = {h.upper() for h in right}

    def line(values: Sequence[str]) -> str:
        out = []
        for i, v in enumerate(values):
            last = i == len(values) - 1
            if heads[i] in align_right:
                out.append(v.rjust(widths[i]))
            else:
                out.append(v if last else v.ljust(widths[i]))
        return "  ".join(out).rstrip()

    return "\n".join([line(heads)] + [line(r) for r in body])


def when(ts: float | None) -> str:
    """A timestamp as UTC, to the second (sortable, unambiguous across operators' time zones)."""
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


def counts(d: Mapping[str, int] | None) -> str:
    """Target counts by status: 'installed=3 pending=2' (largest first)."""
    if not d:
        return "-"
    return " ".join(f"{k}={v}" for k, v in sorted(d.items(), key=lambda kv: (-kv[1], kv[0])))


def emit(as_json: bool, data: Any, render: Callable[[Any], str | None]) -> None:
    """Print `data` as JSON, or what `render` makes of it for people."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
        return
    text = render(data)
    if text:
        click.echo(text)


def empty_or(rows: list[Row], headers: Sequence[str], what: str, **kw: Any) -> str:
    return table(headers, rows, **kw) if rows else f"no {what}"
