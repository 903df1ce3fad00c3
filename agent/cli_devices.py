"""`edgefleet devices`: the device-class catalogue."""

from __future__ import annotations

import json
from pathlib import Path

import click

from agent.device_classes import CatalogueError, detect_device_class, load_catalogue, load_device_class_file


class CatalogueFailure(click.ClickException):
    exit_code = 2


def _catalogue(directory: Path | None):  # type: ignore[no-untyped-def]
    try:
        return load_catalogue(directory)
    except CatalogueError as exc:
        raise CatalogueFailure(str(exc)) from exc


@click.group()
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Catalogue folder (default: the packaged one, or $EDGEFLEET_DEVICES).")
@click.pass_context
def devices(ctx: click.Context, directory: Path | None) -> None:
    """Device classes: what each family of devices runs and the limits a model must fit."""
    ctx.obj = directory


@devices.command("list")
@click.option("--json", "as_json", is_flag=True, default=False,
              help="Print every class with all its fields as a JSON list (what `show` prints for one).")
@click.pass_obj
def devices_list(directory: Path | None, as_json: bool) -> None:
    """One line per device class."""
    cat = _catalogue(directory)
    if as_json:
        click.echo(json.dumps([dc.to_dict() for dc in cat.values()], indent=2))
        return
    click.echo(f"{'NAME':<18} {'ARCH':<8} {'FORMAT':<9} {'PREC':<5} {'RUNTIME':<12} {'MAX MB':>7} {'BUDGET ms':>9}")
    for dc in cat.values():
        click.echo(f"{dc.name:<18} {dc.arch:<8} {dc.format:<9} {dc.precision:<5} {dc.runtime:<12} "
                   f"{dc.max_model_bytes / 2**20:>7.1f} {dc.latency_budget_ms:>9.1f}")


@devices.command("show")
@click.argument("name")
@click.pass_obj
def devices_show(directory: Path | None, name: str) -> None:
    """All fields of one class, as JSON."""
    cat = _catalogue(directory)
    if name not in cat:
        raise CatalogueFailure(f"unknown device class {name!r}; known: {', '.join(cat)}")
    click.echo(json.dumps(cat[name].to_dict(), indent=2))


@devices.command("validate")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_obj
def devices_validate(directory: Path | None, paths: tuple[Path, ...]) -> None:
    """Check device-class files against the schema (default: the whole catalogue)."""
    try:
        names = [load_device_class_file(p).name for p in paths] if paths else list(load_catalogue(directory))
    except CatalogueError as exc:
        raise CatalogueFailure(str(exc)) from exc
    click.echo(f"{len(names)} device class(es) valid: {', '.join(names)}")


@devices.command("detect")
@click.pass_obj
def devices_detect(directory: Path | None) -> None:
    """The class that fits the machine this runs on."""
    try:
        dc = detect_device_class(_catalogue(directory))
    except CatalogueError as exc:
        raise CatalogueFailure(str(exc)) from exc
    click.echo(dc.name)
