"""`edgefleet models`: the fleet's model catalogue (list, show, upload signed bundles) via
/api/models. Uploads stream the bundle as application/octet-stream; the fleet verifies its
signature against its trusted build keys before anything is stored."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import click

from edgefleet.ops.client import OpsError
from edgefleet.ops.command import CONTEXT, Ops, api_command
from edgefleet.ops.output import cell, empty_or, table, when


@click.group("models", context_settings=CONTEXT)
def models() -> None:
    """The fleet's model catalogue: signed bundles per version and device class."""


def render_index(body: dict[str, Any]) -> str:
    rows = [(m["name"], m["latest"], m["versions"], m["device_classes"]) for m in body["items"]]
    return empty_or(rows, ["name", "latest", "versions", "device classes"], "models", right=["latest"])


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f}"


def render_versions(items: list[dict[str, Any]]) -> str:
    rows = [(v["version"], v.get("status", "active"), v["device_class"], v["format"], v["precision"],
             _mb(v.get("size")), (v.get("bundle_sha256") or "")[:12], v.get("signed_by"), when(v.get("created_at")))
            for v in items]
    out = empty_or(rows, ["version", "status", "device class", "format", "precision", "MB", "bundle", "signed by",
                          "uploaded"], "versions", right=["version", "MB"])
    flagged = sorted({(v["version"], v["status"]) for v in items if v.get("status", "active") != "active"})
    return "\n".join([out] + [f"warning: v{ver} is {st}" + (" (rollouts need --allow-deprecated)"
                                                            if st == "deprecated" else " (no rollouts)")
                              for ver, st in flagged])


def render_version(body: dict[str, Any]) -> str:
    out = [render_versions(body["items"])]
    for v in body["items"]:
        metrics = v.get("metrics") or {}
        if metrics:
            out += ["", f"Metrics ({v['device_class']})",
                    table(["metric", "value"], sorted((k, cell(x)) for k, x in metrics.items()))]
        lin = v.get("lineage") or {}
        if lin.get("passes") or lin.get("facts"):
            facts = ", ".join(f"{x['key']}={cell(x['value'])}" for x in lin.get("facts") or [])
            out += ["", f"Lineage ({v['device_class']}): passes {' -> '.join(lin.get('passes') or []) or '-'}; "
                        f"parent {lin.get('parent') or '-'}" + (f"; {facts}" if facts else "")]
    return "\n".join(out)


@models.command("list", context_settings=CONTEXT)
@api_command
def list_cmd(ops: Ops) -> None:
    """Every model with its versions and device classes."""
    ops.emit(ops.api.get("/api/models"), render_index)


@models.command("show", context_settings=CONTEXT)
@click.argument("name")
@click.option("--version", "version", type=click.IntRange(min=0), default=None, show_default="all versions",
              help="One version, with its metrics and lineage.")
@click.option("--device-class", default=None, show_default="every class", help="With --version: one device class.")
@click.option("--limit", type=click.IntRange(1, 500), default=50, help="Versions per page (without --version).")
@api_command
def show(ops: Ops, name: str, version: int | None, device_class: str | None, limit: int) -> None:
    """Builds of one model.

    Per version and device class of NAME: format, precision, size, bundle digest, signer."""
    if version is None:
        body = ops.api.get(f"/api/models/{name}/versions", limit=limit)
        ops.emit(body, lambda b: render_versions(b["items"]))
    else:
        body = ops.api.get(f"/api/models/{name}/versions/{version}", device_class=device_class)
        ops.emit(body, render_version)


@models.command("upload", context_settings=CONTEXT)
@click.argument("bundles", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--owner-team", default=None, help="Owning team, set at a model's first upload.")
@click.option("--owner-contact", default=None, help="Owner contact (mail, chat channel), first upload.")
@click.option("--oncall", default=None, help="On-call reference, first upload.")
@click.option("--review-days", type=click.IntRange(1, 3650), default=None, help="Review interval, first upload.")
@api_command
def upload(ops: Ops, bundles: tuple[Path, ...], owner_team: str | None, owner_contact: str | None,
           oncall: str | None, review_days: int | None) -> None:
    """Upload signed bundles.

    The fleet verifies each of BUNDLES against its trusted build keys before storing it. A
    production fleet needs --owner-team, --owner-contact and --oncall for a new model.

    --json prints a list with one catalogue entry per bundle (`created` false: already present)."""
    results = []
    for b in bundles:
        try:
            owner = {"owner_team": owner_team, "owner_contact": owner_contact, "oncall": oncall,
                     "review_interval_days": review_days}
            qs = urllib.parse.urlencode({k: v for k, v in owner.items() if v is not None})
            res = ops.api.upload("/api/models" + (f"?{qs}" if qs else ""), b)
        except OpsError as exc:
            done = f" ({len(results)} uploaded before it)" if results else ""
            raise OpsError(f"{b}: {exc.message}{done}", exc.exit_code, exc.status, exc.code) from None
        results.append({**res.body, "created": res.status == 201})

    def render(_: Any) -> str:
        return "\n".join(f"{'added' if v['created'] else 'already present'}: {v['name']} v{v['version']} "
                         f"({v['device_class']}) sha256 {v['bundle_sha256']}" for v in results)

    ops.emit(results, render)


from edgefleet.ops.lifecycle import register  # noqa: E402  (owner, status, deprecate, retire, ...)

register(models)
