"""`fleet` command group (mounted as `edgefleet fleet ...`; also `python -m fleet ...`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from fleet.settings import FleetSettings, load_settings


def _service_logging(ctx: click.Context) -> None:
    import logging

    if not ctx.meta.get("fleet.verbose"):
        logging.getLogger().setLevel(logging.INFO)


def _settings(ctx: click.Context) -> FleetSettings:
    return ctx.meta["fleet.settings"]


@click.group("fleet")
@click.option("--config", type=click.Path(dir_okay=False), default=None, help="TOML settings file.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Fleet data directory.")
@click.option("-v", "--verbose", is_flag=True)
@click.pass_context
def fleet(ctx: click.Context, config: str | None, data_dir: str | None, verbose: bool) -> None:
    """Fleet manager: registry, catalogue, telemetry, drift, console."""
    from fleet.logs import setup

    setup(verbose)
    # ctx.meta (not ctx.obj) so mounting under another group with its own obj keeps working
    ctx.meta["fleet.verbose"] = verbose
    overrides = {"data_dir": data_dir} if data_dir else {}
    ctx.meta["fleet.settings"] = load_settings(config, **overrides)


@fleet.command()
@click.option("--production", is_flag=True, help="Serve with waitress instead of the development server.")
@click.option("--host", default=None)
@click.option("--port", type=int, default=None)
@click.option("--no-ingest", is_flag=True, help="Do not run the ingest subscriber in this process.")
@click.pass_context
def serve(ctx: click.Context, production: bool, host: str | None, port: int | None, no_ingest: bool) -> None:
    """Run the API and console (and ingest, and a broker when none is reachable)."""
    _service_logging(ctx)
    from fleet.server import FleetServer

    srv = FleetServer(_settings(ctx), production=production, host=host, port=port,
                      start_ingest=False if no_ingest else None).start()
    click.echo(f"EdgeFleet fleet manager on {srv.url} (console: {srv.url}/console/, MQTT: "
               f"{srv.settings.mqtt_url or 'off'})")
    srv.serve_forever()


@fleet.command()
@click.pass_context
def ingest(ctx: click.Context) -> None:
    """Run one telemetry ingest process (scale out: run several on an MQTT 5 broker)."""
    _service_logging(ctx)
    from fleet.ingest import run_forever

    s = _settings(ctx)
    s.mqtt_url = s.mqtt_url or "mqtt://127.0.0.1:1883"
    run_forever(s)


@fleet.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head")
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Apply migrations (keeps data)."""
    from fleet.db import make_engine
    from fleet.migrate import current, upgrade

    s = _settings(ctx)
    engine = make_engine(s.database_url, data_dir=s.data_dir)
    upgrade(engine, revision)
    click.echo(f"database at revision {current(engine)}")


def _engine(s: FleetSettings):  # type: ignore[no-untyped-def]
    from fleet.db import init_db, make_engine

    engine = make_engine(s.database_url, data_dir=s.data_dir)
    init_db(engine)
    return engine


@fleet.group()
def token() -> None:
    """API tokens."""


@token.command("create")
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), required=True)
@click.option("--name", default=None)
@click.pass_context
def token_create(ctx: click.Context, role: str, name: str | None) -> None:
    """Create an API token; it is printed once (only its hash is stored)."""
    from fleet.auth import create_api_token
    from fleet.db import session_scope

    with session_scope(_engine(_settings(ctx))) as s:
        tok, row = create_api_token(s, name or f"{role}-cli", role, "cli")
    click.echo(tok)


@fleet.group("enrol-token")
def enrol_token() -> None:
    """One-time enrolment tokens."""


@enrol_token.command("create")
@click.option("--ttl", type=float, default=24 * 3600, help="Seconds.")
@click.option("--device-class", default=None)
@click.option("--attr", multiple=True, help="key=value (repeatable), e.g. region=eu")
@click.option("--tag", multiple=True)
@click.pass_context
def enrol_token_create(ctx: click.Context, ttl: float, device_class: str | None, attr: tuple[str, ...],
                       tag: tuple[str, ...]) -> None:
    from fleet.db import session_scope
    from fleet.enrolment import create_enrolment_token

    attrs = dict(a.split("=", 1) for a in attr)
    with session_scope(_engine(_settings(ctx))) as s:
        tok, _ = create_enrolment_token(s, "cli", ttl_s=ttl, device_class=device_class, tags=list(tag),
                                        attributes=attrs)
    click.echo(tok)


@fleet.group()
def devices() -> None:
    """Device registry."""


@devices.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def devices_list(ctx: click.Context, as_json: bool) -> None:
    from sqlmodel import select

    from fleet.db import session_scope
    from fleet.enrolment import device_view
    from fleet.models import Device

    with session_scope(_engine(_settings(ctx))) as s:
        rows = [device_view(d) for d in s.exec(select(Device).order_by(Device.id))]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for d in rows:
        inst = d["installed"]
        click.echo(f"{d['id']:<24} {d['status']:<15} {d['device_class']:<20} "
                   f"{(inst['name'] + ' v' + str(inst['version'])) if inst else '-':<16} {d['attributes']}")


@fleet.group()
def models() -> None:
    """Model catalogue."""


@models.command("upload")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@click.pass_context
def models_upload(ctx: click.Context, bundle: str) -> None:
    """Verify BUNDLE against the trusted build keys and add it to the catalogue."""
    import shutil
    import tempfile

    from fleet.catalogue import CatalogueError, add_bundle
    from fleet.db import session_scope
    from fleet.fleet_keys import build_keyring

    s = _settings(ctx)
    s.artifacts_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=s.artifacts_dir)
    with open(fd, "wb") as out, open(bundle, "rb") as src:
        shutil.copyfileobj(src, out)
    try:
        with session_scope(_engine(s)) as db_s:
            res = add_bundle(db_s, s, Path(tmp), build_keyring(s), "cli")
            mv = res.version
            click.echo(f"{'added' if res.created else 'already present'}: {mv.name} v{mv.version} "
                       f"({mv.device_class}) sha256 {mv.bundle_sha256}")
    except CatalogueError as exc:
        click.echo(f"refused: {exc.code}: {exc.message}", err=True)
        sys.exit(1)


def main() -> None:
    fleet(prog_name="fleet")
