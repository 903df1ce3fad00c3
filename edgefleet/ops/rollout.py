"""`edgefleet rollout`: create, list, show, wait for, approve, pause, resume, abort and roll back
staged rollouts through /api/rollouts. Waves are numbered from 1, as in the console."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from edgefleet.ops.client import FAILED, OpsError
from edgefleet.ops.command import CONTEXT, Ops, api_command
from edgefleet.ops.output import counts, empty_or, table, when
from edgefleet.ops.rollout_spec import DEFAULT_WAVES, SpecFlags, build_spec

# How each gate compares its measured value with its threshold (fleet/rollouts/gates.py).
GATE_SENSE = {"installs": "<=", "success": ">=", "reporting": ">=", "errors": "<=", "latency_p99": "<=",
              "prediction_drift": "<=", "feature_drift": "<=", "shadow_agreement": ">="}
FINISHED = ("completed", "aborted", "rolled-back")


@click.group("rollout", context_settings=CONTEXT)
def rollout() -> None:
    """Staged, gated rollouts of a model version to the fleet (the REST API's /api/rollouts)."""


def _wave_of(r: dict[str, Any]) -> str:
    n = len(r.get("waves") or r.get("spec", {}).get("waves") or [])
    cur = int(r.get("current_wave") or 0) + 1
    return f"{cur}/{n}" if n else str(cur)


def render_list(body: dict[str, Any]) -> str:
    rows = [(r["id"], r["name"], r["model_name"], r["version"], r["fleet"], r["status"],
             int(r.get("current_wave") or 0) + 1, counts(r.get("targets")), when(r.get("created_at")))
            for r in body["rollouts"]]
    return empty_or(rows, ["id", "name", "model", "version", "fleet", "status", "wave", "targets", "created"],
                    "rollouts", right=["id", "version", "wave"])


def _limit(g: dict[str, Any]) -> str:
    if g.get("threshold") is None:
        return "-"
    return f"{GATE_SENSE.get(g['gate'], '')} {g['threshold']:g}".strip()


def _gate_rows(wave_no: Any, gates: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(wave_no, g["gate"], g["status"], "-" if g.get("value") is None else f"{g['value']:g}", _limit(g))
            for g in gates]


def render_detail(r: dict[str, Any]) -> str:
    lines = [f"Rollout {r['id']}  {r['name']}  ({r['model_name']} v{r['version']}, fleet {r['fleet']})",
             f"Status:   {r['status']}, wave {_wave_of(r)}",
             f"Created:  {when(r.get('created_at'))} by {r.get('created_by') or '-'}"]
    if r.get("completed_at"):
        lines.append(f"Finished: {when(r['completed_at'])}")
    if (r.get("waiting") or {}).get("message"):    # blind fleet: gates and clocks stopped (issue 20)
        lines.append(f"Waiting:  {r['waiting']['message']}; gates and clocks stopped")
    reason = r.get("reason") or {}
    if reason:
        why = reason.get("summary") or ": ".join(str(x) for x in (reason.get("kind"), reason.get("why")) if x)
        lines.append(f"Reason:   {why}"
                     + (f" (by {reason['by']})" if reason.get("by") else ""))
        if reason.get("failed_devices"):
            lines.append(f"Failed devices: {', '.join(reason['failed_devices'])}")
    waves = r.get("waves") or []
    lines += ["", "Waves", table(
        ["#", "name", "mode", "status", "devices", "targets", "approved by"],
        [(w["index"] + 1, w["name"], w["mode"] if w["mode"] == w["phase"] else f"{w['mode']}->{w['phase']}",
          w["status"], w["planned"], counts(w.get("targets")), w.get("approved_by")) for w in waves],
        right=["#", "devices"])]
    gate_rows = [row for w in waves for row in _gate_rows(w["index"] + 1, w.get("gates") or [])]
    breach = reason.get("gates") or []
    if breach and not any(g["status"] == "fail" for w in waves for g in (w.get("gates") or [])):
        gate_rows += _gate_rows(int(reason.get("wave", 0)) + 1, breach)
    lines += ["", "Gates (measured vs limit, last evaluation)",
              empty_or(gate_rows, ["wave", "gate", "status", "value", "limit"], "gate evaluations yet",
                       right=["wave", "value"])]
    total = r.get("targets") or {}
    lines += ["", "Targets", empty_or(sorted(total.items(), key=lambda kv: (-kv[1], kv[0])), ["status", "devices"],
                                       "targets", right=["devices"])]
    return "\n".join(lines)


def render_targets(body: dict[str, Any]) -> str:
    rows = [(t["device_id"], t["wave"] + 1, t["device_class"], t["status"],
             None if t.get("from_version") is None else f"v{t['from_version']}", t.get("reason"))
            for t in body["targets"]]
    return empty_or(rows, ["device", "wave", "class", "status", "from", "reason"], "targets", right=["wave"])


@rollout.command("list", context_settings=CONTEXT)
@click.option("--status", default=None, help="Only rollouts in this status (running, paused, completed, ...).")
@api_command
def list_cmd(ops: Ops, status: str | None) -> None:
    """Rollouts, newest first."""
    ops.emit(ops.api.get("/api/rollouts", status=status), render_list)


@rollout.command("show", context_settings=CONTEXT)
@click.argument("rollout_id", type=int)
@click.option("--targets", "with_targets", is_flag=True, default=False,
              help="Also list every target device with its wave and status.")
@click.option("--wave", type=click.IntRange(min=1), default=None, show_default="every wave",
              help="With --targets: only the devices of this wave (1 is the first).")
@api_command
def show(ops: Ops, rollout_id: int, with_targets: bool, wave: int | None) -> None:
    """Waves, gate verdicts and target counts.

    Each wave's last gate verdict shows the measured value against its limit."""
    r = ops.api.get(f"/api/rollouts/{rollout_id}")
    if with_targets or wave is not None:
        with_targets = True
        q = {"wave": wave - 1} if wave is not None else {}
        r = {**r, "target_list": ops.api.get(f"/api/rollouts/{rollout_id}/targets", **q)["targets"]}
    ops.emit(r, lambda d: render_detail(d) + ("\n\nDevices\n" + render_targets({"targets": d["target_list"]})
                                              if with_targets else ""))


@rollout.command("create", context_settings=CONTEXT)
@click.argument("spec_file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", default=None, help="Model name (overrides the spec file's model_name).")
@click.option("--version", "version", type=click.IntRange(min=0), default=None, help="Model version to roll out.")
@click.option("--name", default=None, show_default="MODEL-vVERSION", help="Rollout name.")
@click.option("--fleet", default=None, show_default="the spec's, else 'default'", help="Fleet id to target.")
@click.option("--device-class", "device_classes", multiple=True, help="Only this device class (repeatable).")
@click.option("--tag", "tags", multiple=True, help="Only devices carrying this tag (repeatable; all must match).")
@click.option("--attr", "attrs", multiple=True, metavar="KEY=VALUE",
              help="Only devices with this attribute value, e.g. region=eu (repeatable).")
@click.option("--device", "devices", multiple=True, metavar="ID", help="Only these device ids (repeatable).")
@click.option("--waves", default=None, show_default=f"the spec's, else {DEFAULT_WAVES}",
              help="Cumulative wave sizes: percents, or device counts with a 'd' suffix (e.g. 2d,50,100).")
@click.option("--gate", "gates", multiple=True, metavar="NAME=VALUE",
              help="Gate threshold for every wave, e.g. max_prediction_psi=0.1 (repeatable).")
@click.option("--require-approval", is_flag=True, default=False,
              help="Every wave waits for `edgefleet rollout approve` before the next starts.")
@click.option("--shadow-first", is_flag=True, default=False,
              help="Run the first wave in shadow mode beside the current model.")
@click.option("--dry-run", is_flag=True, default=False, help="Print the spec that would be sent and exit.")
@click.option("--allow-deprecated", is_flag=True, default=False,
              help="Roll out a deprecated version anyway (a retired one is always refused).")
@api_command
def create(ops: Ops, spec_file: Path | None, dry_run: bool, allow_deprecated: bool, **flags: Any) -> None:
    """Start a rollout from a spec file and/or flags.

    SPEC_FILE is TOML or JSON, the body POST /api/rollouts takes; flags override it.

    \b
    edgefleet rollout create --model digits --version 2 --waves 10,50,100
    edgefleet rollout create rollout.toml --version 3
    """
    spec = build_spec(spec_file, SpecFlags(**flags))
    if allow_deprecated:
        spec["allow_deprecated"] = True
    if dry_run:
        ops.emit(spec, lambda s: json.dumps(s, indent=2, sort_keys=True))
        return
    r = ops.api.post("/api/rollouts", spec)
    for w in r.get("warnings") or []:
        click.echo(f"warning: {w}", err=True)
    ops.emit(r, lambda d: f"created rollout {d['id']} ({d['model_name']} v{d['version']}, "
                          f"{sum((d.get('targets') or {}).values())} devices in {len(d['waves'])} waves)\n\n"
                          + render_detail(d))


def _operation(op: str, done: str) -> None:
    @click.argument("rollout_id", type=int)
    @api_command
    def cmd(ops: Ops, rollout_id: int, **kw: Any) -> None:
        body = {"reason": kw["reason"]} if kw.get("reason") else {}
        r = ops.api.post(f"/api/rollouts/{rollout_id}/{op}", body)
        ops.emit(r, lambda d: f"rollout {d['id']} {done}: now {d['status']}, wave {_wave_of(d)}")

    helps = {"approve": "Approve the current wave.\n\nThe next wave of ROLLOUT_ID starts on the next tick.",
             "pause": "Pause a rollout.\n\nROLLOUT_ID sends no new commands until it is resumed.",
             "resume": "Resume a paused rollout.\n\nA failed wave of ROLLOUT_ID is retried from its start.",
             "abort": "Stop a rollout for good.\n\nDevices keep what they run; see `rollout rollback`.",
             "rollback": "Roll a rollout's devices back.\n\nEvery device ROLLOUT_ID touched goes back to the "
                         "version it ran before, by signed command."}
    cmd.__doc__ = helps[op]
    if op == "pause":
        cmd = click.option("--reason", default="operator pause", help="Why; kept in the audit log.")(cmd)
    rollout.command(op, context_settings=CONTEXT)(cmd)


for _op, _done in (("approve", "approved"), ("pause", "paused"), ("resume", "resumed"), ("abort", "aborted"),
                   ("rollback", "rolled back")):
    _operation(_op, _done)


@rollout.command("rollback-version", context_settings=CONTEXT)
@click.argument("model")
@click.argument("version", type=click.IntRange(min=0))
@click.option("--fleet", default=None, show_default="the fleet manager's fleet", help="Fleet id.")
@click.option("--device-class", "device_classes", multiple=True, help="Only this device class (repeatable).")
@click.option("--tag", "tags", multiple=True, help="Only devices carrying this tag (repeatable).")
@click.option("--attr", "attrs", multiple=True, metavar="KEY=VALUE", help="Only this attribute value (repeatable).")
@click.option("--device", "devices", multiple=True, metavar="ID", help="Only these device ids (repeatable).")
@api_command
def rollback_version(ops: Ops, model: str, version: int, fleet: str | None, device_classes: tuple[str, ...],
                     tags: tuple[str, ...], attrs: tuple[str, ...], devices: tuple[str, ...]) -> None:
    """Roll a version back fleet-wide or per cohort.

    Every device running MODEL vVERSION (matching the filters) goes back to the version it ran
    before, in one call; live rollouts of that version are paused first."""
    target = build_spec(None, SpecFlags(model=model, version=version, fleet=fleet, device_classes=device_classes,
                                        tags=tags, attrs=attrs, devices=devices)).get("target", {})
    body = ops.api.post("/api/rollouts/rollback-version", {"model_name": model, "version": version,
                                                           "target": target})
    skipped = "".join(f"\n  skipped {x['device']}: {x['reason']}" for x in body.get("skipped") or [])
    ops.emit(body, lambda b: f"{b['commands']} device(s) running {model} v{version} sent back to their previous "
                             f"version{skipped}")


@rollout.command("wait", context_settings=CONTEXT)
@click.argument("rollout_id", type=int)
@click.option("--for", "until", default="completed,paused,aborted,rolled-back,awaiting-approval",
              help="Comma-separated statuses to wait for.")
@click.option("--wait-timeout", type=click.FloatRange(min=0), default=600.0, help="Give up after this many seconds.")
@click.option("--interval", type=click.FloatRange(min=0.05), default=2.0, help="Seconds between polls.")
@api_command
def wait(ops: Ops, rollout_id: int, until: str, wait_timeout: float, interval: float) -> None:
    """Wait until a rollout reaches a status.

    Like `kubectl wait`: exit 0 once ROLLOUT_ID is in one of the statuses, 1 on timeout or when
    it finished in another."""
    want = {s.strip() for s in until.split(",") if s.strip()}
    deadline = time.monotonic() + wait_timeout
    seen = ""
    while True:
        r = ops.api.get(f"/api/rollouts/{rollout_id}")
        progress = f"{r['status']}, wave {_wave_of(r)}: {counts(r.get('targets'))}"
        if progress != seen and not ops.as_json:
            click.echo(f"  {time.strftime('%H:%M:%S')}  {progress}", err=True)   # progress, like gh run watch
            seen = progress
        if r["status"] in want:
            ops.emit(r, lambda d: f"rollout {d['id']} is {d['status']} (wave {_wave_of(d)})"
                                  + (f": {d['reason']['summary']}" if (d.get("reason") or {}).get("summary")
                                     else ""))
            return
        if r["status"] in FINISHED:
            raise OpsError(f"rollout {rollout_id} is {r['status']}; it will not become {' or '.join(sorted(want))}",
                           FAILED)
        if time.monotonic() >= deadline:
            raise OpsError(f"rollout {rollout_id} is still {r['status']} after {wait_timeout:g}s "
                           f"(waited for {', '.join(sorted(want))})", FAILED)
        time.sleep(interval)
