"""`edgefleet alerts`: drift alerts raised by the fleet (list, show, acknowledge) via /api/alerts."""

from __future__ import annotations

import json
from typing import Any

import click

from edgefleet.ops.command import CONTEXT, Ops, api_command
from edgefleet.ops.output import empty_or, when

HEADERS = ["id", "created", "level", "model", "version", "cohort", "reference", "status", "summary"]


@click.group("alerts", context_settings=CONTEXT)
def alerts() -> None:
    """Drift alerts: what drifted, where, against which reference; acknowledge them."""


def _row(a: dict[str, Any]) -> tuple[Any, ...]:
    return (a["id"], when(a.get("created_at")), a["level"], a["model"], a["version"], a.get("cohort"),
            a.get("reference"), a["status"], a.get("summary"))


def render_list(body: dict[str, Any]) -> str:
    text = empty_or([_row(a) for a in body["items"]], HEADERS, "alerts", right=["id", "version"])
    if body.get("next_offset") is not None:
        text += f"\n({len(body['items'])} of {body['total']}; next page: --offset {body['next_offset']})"
    return text


def render_alert(a: dict[str, Any]) -> str:
    lines = [f"Alert {a['id']}  {a['level']}  {a['model']} v{a['version']}  ({a['status']})",
             f"Cohort:    {a.get('cohort') or '-'} ({a.get('device_class') or '-'})",
             f"Window:    {when(a.get('window_start'))} .. {when(a.get('window_end'))}",
             f"Reference: {a.get('reference')}",
             f"Summary:   {a.get('summary')}"]
    if a.get("acknowledged_by"):
        lines.append(f"Acknowledged by {a['acknowledged_by']} at {when(a.get('acknowledged_at'))}")
    if a.get("evidence") is not None:
        lines += ["Evidence:", json.dumps(a["evidence"], indent=2, sort_keys=True)]
    return "\n".join(lines)


@alerts.command("list", context_settings=CONTEXT)
@click.option("--status", type=click.Choice(["open", "acknowledged"]), default=None,
              show_default="any", help="Only alerts in this status.")
@click.option("--model", default=None, help="Only alerts for this model name.")
@click.option("--limit", type=click.IntRange(1, 500), default=50, help="Alerts per page.")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip this many (newest first).")
@api_command
def list_cmd(ops: Ops, status: str | None, model: str | None, limit: int, offset: int) -> None:
    """Alerts, newest first."""
    body = ops.api.get("/api/alerts", status=status, model=model, limit=limit, offset=offset)
    ops.emit(body, render_list)


@alerts.command("show", context_settings=CONTEXT)
@click.argument("alert_id", type=int)
@api_command
def show(ops: Ops, alert_id: int) -> None:
    """One alert with its drift evidence."""
    ops.emit(ops.api.get(f"/api/alerts/{alert_id}"), render_alert)


@alerts.command("ack", context_settings=CONTEXT)
@click.argument("alert_ids", type=int, nargs=-1, required=True)
@api_command
def ack(ops: Ops, alert_ids: tuple[int, ...]) -> None:
    """Acknowledge alerts.

    Each of ALERT_IDS is acknowledged under the token's name, in the audit log.

    --json prints the list of acknowledged alerts."""
    done = [ops.api.post(f"/api/alerts/{i}/ack") for i in alert_ids]
    ops.emit(done, lambda _: "\n".join(f"alert {a['id']} acknowledged by {a['acknowledged_by']}" for a in done))
