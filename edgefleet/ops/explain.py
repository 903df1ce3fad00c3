"""`edgefleet explain`: ask a device to explain its next sampled requests, and read the answers
(POST /api/devices/<id>/explain, GET /api/devices/<id>/explanations/<command_id>)."""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

import click

from edgefleet.ops.client import FAILED, OpsError
from edgefleet.ops.command import CONTEXT, Ops, api_command
from edgefleet.ops.output import cell, table, when

FINAL = ("complete", "refused", "expired")
HEADERS = ["index", "prediction", "score", "latency_ms", "top attributions"]


@click.group("explain", context_settings=CONTEXT)
def explain() -> None:
    """Per-request explanations from devices (a signed command; attributions only, no raw inputs)."""


def _path(device_id: str, *rest: str) -> str:
    return "/".join(["/api/devices", *(urllib.parse.quote(p, safe="") for p in (device_id, *rest))])


def _row(e: dict[str, Any]) -> tuple[Any, ...]:
    ex = e.get("explanation") or {}
    first = (ex.get("rows") or [{}])[0]
    attrs = " ".join(f"{a['feature']}={a['attribution']:+.4g}" for a in (first.get("attributions") or [])[:5])
    return (e.get("index"), first.get("prediction"), first.get("score"), ex.get("latency_ms"), attrs)


def render(v: dict[str, Any]) -> str:
    lines = [f"Explain request {v['command_id']} on {v['device_id']}  ({v['status']})",
             f"Model:    {v.get('model') or '-'} v{cell(v.get('version'))}",
             f"Asked:    {v['count']} requests, sample rate {v['sample_rate']:g}, top {cell(v.get('top_k'))}",
             f"Sent:     {when(v.get('sent_at'))}  (expires {when(v.get('expires_at'))})",
             f"Answered: {v['received']} explained, {v['failed']} failed"]
    if v.get("refused"):
        lines.append(f"Refused:  {v['refused']}")
    if v.get("explanations"):
        lines += ["", table(HEADERS, [_row(e) for e in v["explanations"]], right=["index", "score", "latency_ms"])]
    for f in v.get("failures") or []:
        lines.append(f"request {f.get('index')}: not explained ({f.get('reason')})")
    return "\n".join(lines)


def _wait(ops: Ops, view: dict[str, Any], wait_s: float) -> dict[str, Any]:
    """Poll until the request is complete, refused or expired; exit 1 (after printing) on time-out."""
    deadline = time.monotonic() + wait_s
    while view["status"] not in FINAL and time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        view = ops.api.get(_path(view["device_id"], "explanations", view["command_id"]))
    ops.emit(view, render)
    if view["status"] != "complete":
        raise OpsError(f"explain request {view['command_id']} is {view['status']} "
                       f"({view['received']} of {view['count']} explained)", FAILED)
    return view


_WAIT = click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=None, show_default="no waiting",
                     help="Seconds to wait for every answer; exit 1 if the request is not complete by then.")


@explain.command("request", context_settings=CONTEXT)
@click.argument("device_id")
@click.option("--count", type=click.IntRange(1, 100), default=5, help="Requests to explain.")
@click.option("--sample-rate", type=click.FloatRange(0, 1, min_open=True), default=1.0,
              help="Share of requests drawn (the device explains every drawn one until COUNT).")
@click.option("--top-k", type=click.IntRange(min=1), default=10, help="Attributions kept per row.")
@click.option("--ttl", "ttl_s", type=click.FloatRange(10, 7 * 86400), default=3600.0,
              help="Seconds the signed command stays valid.")
@_WAIT
@api_command
def request_cmd(ops: Ops, device_id: str, count: int, sample_rate: float, top_k: int, ttl_s: float,
                wait_s: float | None) -> None:
    """Ask DEVICE_ID to explain its next sampled requests with its own runtime.

    Prints the request (its command id); `edgefleet explain show DEVICE_ID COMMAND_ID` reads the
    answers, or pass --wait."""
    view = ops.api.post(_path(device_id, "explain"),
                        {"count": count, "sample_rate": sample_rate, "top_k": top_k, "ttl_s": ttl_s})
    if wait_s is not None:
        _wait(ops, view, wait_s)
        return
    ops.emit(view, render)


@explain.command("show", context_settings=CONTEXT)
@click.argument("device_id")
@click.argument("command_id")
@_WAIT
@api_command
def show(ops: Ops, device_id: str, command_id: str, wait_s: float | None) -> None:
    """One explain request: its status and the explanations the device sent."""
    view = ops.api.get(_path(device_id, "explanations", command_id))
    if wait_s is not None:
        _wait(ops, view, wait_s)
        return
    ops.emit(view, render)
