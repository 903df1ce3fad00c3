"""`edgefleet models owner|status|deprecate|retire|reactivate|move-off|revocations`: the model
lifecycle (issue 16) through /api/models/<name>/owner, .../versions/<v>/status and
/api/lifecycle/revocations. Every change needs a reason; the fleet audits it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edgefleet.ops.command import CONTEXT, Ops, api_command
from edgefleet.ops.output import table, when

_REASON = click.option("--reason", required=True, help="Why; kept in the audit log with your name.")


def render_owner(o: dict[str, Any]) -> str:
    if not o.get("set"):
        return f"{o['name']}: no owner set (edgefleet models owner {o['name']} --team ... --reason ...)"
    return (f"Model:    {o['name']}\nTeam:     {o['team'] or '-'}\nContact:  {o['contact'] or '-'}\n"
            f"On-call:  {o['oncall'] or '-'}\nReview:   every {o['review_interval_days']} days\n"
            f"Changed:  {when(o.get('updated_at'))} by {o.get('updated_by') or '-'}")


def render_status(s: dict[str, Any]) -> str:
    line = f"{s['name']} v{s['version']}: {s['status']}"
    if s.get("reason"):
        line += f" ({s['reason']}; {s.get('changed_by') or '-'}, {when(s.get('changed_at'))})"
    if s["status"] == "deprecated":
        line += "\nwarning: new rollouts of this version need `edgefleet rollout create --allow-deprecated`"
    if s["status"] == "retired":
        line += ("\nretired: rollouts are refused. Move devices off it with `edgefleet models move-off"
                 f" {s['name']} {s['version']}`; revoke it on devices with the next signed key list"
                 " (`edgefleet models revocations --out revoked.json`, then"
                 " `edgefleet keys sign-keylist ... --revoked revoked.json`)")
    return line


@click.command("owner", context_settings=CONTEXT)
@click.argument("name")
@click.option("--team", default=None, help="Owning team.")
@click.option("--contact", default=None, help="Contact (mail, chat channel).")
@click.option("--oncall", default=None, help="On-call reference (rota, pager service).")
@click.option("--review-days", type=click.IntRange(1, 3650), default=None, help="Review interval in days.")
@click.option("--reason", default=None, help="Why the owner changes (required with a change).")
@api_command
def owner(ops: Ops, name: str, team: str | None, contact: str | None, oncall: str | None,
          review_days: int | None, reason: str | None) -> None:
    """Show NAME's owner, or change it (any of --team/--contact/--oncall/--review-days)."""
    change = {k: v for k, v in (("team", team), ("contact", contact), ("oncall", oncall),
                                ("review_interval_days", review_days)) if v is not None}
    if not change:
        ops.emit(ops.api.get(f"/api/models/{name}/owner"), render_owner)
        return
    if not reason:
        raise click.UsageError("changing the owner needs --reason (it is kept in the audit log)")
    body = ops.api.call("PUT", f"/api/models/{name}/owner", json_body={**change, "reason": reason}).body
    ops.emit(body, render_owner)


@click.command("status", context_settings=CONTEXT)
@click.argument("name")
@click.argument("version", type=click.IntRange(min=0))
@api_command
def status(ops: Ops, name: str, version: int) -> None:
    """Lifecycle status of NAME VERSION: active, deprecated or retired, and why."""
    ops.emit(ops.api.get(f"/api/models/{name}/versions/{version}/status"), render_status)

def _transition(cmd_name: str, new: str, doc: str) -> click.Command:
    @click.command(cmd_name, context_settings=CONTEXT, help=doc)
    @click.argument("name")
    @click.argument("version", type=click.IntRange(min=0))
    @_REASON
    @api_command
    def cmd(ops: Ops, name: str, version: int, reason: str) -> None:
        body = ops.api.post(f"/api/models/{name}/versions/{version}/status", {"status": new, "reason": reason})
        ops.emit(body, render_status)

    return cmd


_TRANSITIONS = [
    _transition("deprecate", "deprecated", "Deprecate NAME VERSION: new rollouts of it need --allow-deprecated."),
    _transition("retire", "retired", "Retire NAME VERSION for good: rollouts of it are refused (409)."),
    _transition("reactivate", "active", "Make a deprecated NAME VERSION active again (never a retired one)."),
]


@click.command("move-off", context_settings=CONTEXT)
@click.argument("name")
@click.argument("version", type=click.IntRange(min=0))
@click.option("--fleet", default=None, show_default="the fleet manager's fleet", help="Fleet id.")
@api_command
def move_off(ops: Ops, name: str, version: int, fleet: str | None) -> None:
    """Roll the newest active version out to every device still running NAME VERSION."""
    body = ops.api.post(f"/api/models/{name}/versions/{version}/move-off", {"fleet": fleet} if fleet else {})
    ops.emit(body, lambda d: f"created rollout {d['id']}: {d['model_name']} v{d['version']} to "
                             f"{sum((d.get('targets') or {}).values())} devices still on v{version}")


@click.command("decommission", context_settings=CONTEXT)
@click.argument("name")
@_REASON
@click.option("--device-class", default=None, show_default="every class", help="Only devices of this class.")
@click.option("--version", "version", type=click.IntRange(min=0), default=None, show_default="every version",
              help="Only this version.")
@click.option("--fleet", default=None, show_default="the fleet manager's fleet", help="Fleet id.")
@click.option("--purge-artifacts", is_flag=True, default=False,
              help="Also delete the stored bundles (the catalogue keeps the records).")
@api_command
def decommission(ops: Ops, name: str, reason: str, device_class: str | None, version: int | None,
                 fleet: str | None, purge_artifacts: bool) -> None:
    """Remove NAME from devices: a signed uninstall to the fleet (or one device class)."""
    body = {"reason": reason, "device_class": device_class, "version": version, "fleet": fleet,
            "purge_artifacts": purge_artifacts}
    out = ops.api.call("POST", f"/api/models/{name}/decommission",
                       json_body={k: v for k, v in body.items() if v is not None}).body
    ops.emit(out, lambda d: f"uninstall sent to {len(d['devices'])} devices; artifacts "
                            + (f"purged: {len(d['purged_artifacts'])}" if purge_artifacts
                               else f"kept: {len(d['kept_artifacts'])}"))


@click.command("review", context_settings=CONTEXT)
@click.argument("name")
@click.option("--decision", type=click.Choice(["keep", "retrain", "retire"]), required=True,
              help="The review's outcome; retire needs --version.")
@click.option("--notes", default="", help="What was looked at and why this decision.")
@click.option("--version", "version", type=click.IntRange(min=0), default=None, help="The version reviewed.")
@api_command
def review(ops: Ops, name: str, decision: str, notes: str, version: int | None) -> None:
    """Record a scheduled review of NAME (you are the reviewer)."""
    body = {"decision": decision, "notes": notes, **({"version": version} if version is not None else {})}
    out = ops.api.post(f"/api/models/{name}/reviews", body)
    ops.emit(out, lambda d: f"review {d['id']} of {name}: {d['decision']}; next due {when(d['next']['due_at'])}")


@click.command("reviews", context_settings=CONTEXT)
@click.argument("name")
@api_command
def reviews(ops: Ops, name: str) -> None:
    """NAME's review schedule (OVERDUE when past due) and its reviews."""
    body = ops.api.get(f"/api/models/{name}/reviews")

    def render(b: dict[str, Any]) -> str:
        s = b["schedule"]
        head = (f"{name}: review every {s['interval_days']} days; next due {when(s['due_at'])}"
                + ("  OVERDUE" if s["overdue"] else ""))
        rows = [(when(x["at"]), x["reviewer"], x["decision"], x.get("version") if x.get("version") is not None
                 else "-", x["notes"]) for x in b["items"]]
        return head + "\n" + (table(["when", "reviewer", "decision", "version", "notes"], rows) if rows
                              else "no reviews yet")

    ops.emit(body, render)


@click.command("history", context_settings=CONTEXT)
@click.argument("name")
@api_command
def history(ops: Ops, name: str) -> None:
    """NAME's lifecycle history: uploads, owner and status changes, reviews, decommissions."""
    body = ops.api.get(f"/api/models/{name}/history")

    def why(h: dict[str, Any]) -> str:
        after = h.get("after") if isinstance(h.get("after"), dict) else {}
        return str(after.get("reason") or after.get("decision") or after.get("notes") or "")[:60]

    ops.emit(body, lambda b: table(["when", "who", "action", "target", "why"],
                                   [(when(h["at"]), h["actor"], h["action"], h["target"], why(h))
                                    for h in b["items"]]))


@click.command("card", context_settings=CONTEXT)
@click.argument("name")
@click.argument("version", type=click.IntRange(min=0))
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the Markdown card to this file instead of printing it.")
@api_command
def card(ops: Ops, name: str, version: int, out_path: Path | None) -> None:
    """The model card of NAME VERSION as Markdown (--json: the card's data)."""
    from fleet.catalogue.card_markdown import to_markdown

    body = ops.api.get(f"/api/models/{name}/versions/{version}/card")
    if out_path is not None:
        out_path.write_text(to_markdown(body))
        ops.emit(body, lambda _: f"model card -> {out_path}")
        return
    ops.emit(body, to_markdown)


@click.command("revocations", context_settings=CONTEXT)
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the list here, for `edgefleet keys sign-keylist --revoked FILE`.")
@api_command
def revocations(ops: Ops, out_path: Path | None) -> None:
    """Retired versions that the next signed key list must revoke on devices."""
    body = ops.api.get("/api/lifecycle/revocations")
    if out_path is not None:
        out_path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    ops.emit(body, lambda b: "\n".join([f"{r['model']} v{r['version']}" if "model" in r
                                        else f"bundle {r['bundle_sha256']}" for r in b["revoked"]]
                                       or ["no retired versions"])
             + (f"\n-> {out_path}" if out_path else ""))


def register(models: click.Group) -> None:
    """Add the lifecycle commands to the `edgefleet models` group."""
    for cmd in (owner, status, *_TRANSITIONS, move_off, decommission, review, reviews, history, card, revocations):
        models.add_command(cmd)
