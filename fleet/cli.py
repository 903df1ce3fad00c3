"""`fleet` command group (mounted as `edgefleet fleet ...`; also `python -m fleet ...`)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from fleet.settings import FleetSettings, config_path, load_settings


def _service_logging(ctx: click.Context) -> None:
    import logging

    if not ctx.meta.get("fleet.verbose"):
        logging.getLogger().setLevel(logging.INFO)


def _settings(ctx: click.Context) -> FleetSettings:
    """The one fleet configuration, read once per command; says on stderr which fleet and database."""
    if "fleet.settings" not in ctx.meta:
        config, overrides = ctx.meta["fleet.config"]
        s = load_settings(config, **overrides)
        path = config_path(config, dict(os.environ))
        click.echo(f"using {s.describe()} (settings: {path or 'environment and defaults'})", err=True)
        ctx.meta["fleet.settings"] = s
    return ctx.meta["fleet.settings"]


@click.group("fleet")
@click.option("--config", type=click.Path(dir_okay=False), default=None, show_default="$EDGEFLEET_CONFIG",
              help="fleet.toml to read; then DATABASE_URL, MQTT_URL, EDGEFLEET_* variables; then defaults.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              show_default="data_dir in fleet.toml, $EDGEFLEET_FLEET_DATA, or ./.edgefleet/fleet",
              help="Fleet data directory (SQLite database, artifacts, fleet key).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def fleet(ctx: click.Context, config: str | None, data_dir: str | None, verbose: bool) -> None:
    """Fleet manager: registry, catalogue, telemetry, drift, console.

    Every sub-command reads the same settings (fleet.toml, then environment, then defaults) and
    prints on stderr which fleet and database it uses.
    """
    from fleet.logs import setup

    setup(verbose)
    # ctx.meta (not ctx.obj) so mounting under another group with its own obj keeps working
    ctx.meta["fleet.verbose"] = verbose
    ctx.meta["fleet.config"] = (config, {"data_dir": data_dir} if data_dir else {})


@fleet.command()
@click.option("--production", is_flag=True, help="Serve with waitress instead of the development server.")
@click.option("--host", default=None, show_default="127.0.0.1, or host in fleet.toml",
              help="Interface to listen on (0.0.0.0: every interface).")
@click.option("--port", type=int, default=None, show_default="8080, or port in fleet.toml", help="HTTP port.")
@click.option("--no-ingest", is_flag=True, help="Do not run the ingest subscriber in this process.")
@click.option("--allow-insecure-transport", is_flag=True,
              help="With --production: allow plaintext mqtt:// and http:// to remote hosts.")
@click.pass_context
def serve(ctx: click.Context, production: bool, host: str | None, port: int | None, no_ingest: bool,
          allow_insecure_transport: bool) -> None:
    """Run the API and console (and ingest, and a broker when none is reachable)."""
    _service_logging(ctx)
    from fleet.server import FleetServer

    if production:
        _check_transport(_settings(ctx), allow_insecure_transport)
    srv = FleetServer(_settings(ctx), production=production, host=host, port=port,
                      start_ingest=False if no_ingest else None).start()
    click.echo(f"EdgeFleet fleet manager on {srv.url} (console: {srv.url}/console/, MQTT: "
               f"{srv.settings.mqtt_url or 'off'})")
    srv.serve_forever()


def _check_transport(s: FleetSettings, allow: bool) -> None:
    """Production refuses plaintext MQTT/HTTP to remote hosts (agent.transport_policy): exit 2."""
    from agent.transport_policy import InsecureTransportError, check_transport

    try:
        check_transport({"mqtt_url": s.mqtt_url, "device_mqtt_url": s.device_mqtt_url, "public_url": s.public_url,
                         "retrain.webhook_url": s.retrain.webhook_url}, allow or s.allow_insecure_transport)
    except InsecureTransportError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


@fleet.command()
@click.pass_context
def ingest(ctx: click.Context) -> None:
    """Run one telemetry ingest process (scale out: run several on an MQTT 5 broker)."""
    _service_logging(ctx)
    from fleet.ingest.service import run_forever

    s = _settings(ctx)
    s.mqtt_url = s.mqtt_url or "mqtt://127.0.0.1:1883"
    run_forever(s)


@fleet.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Alembic revision to upgrade to.")
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Apply migrations (keeps data)."""
    from fleet.db import make_engine
    from fleet.migrate import current, upgrade

    s = _settings(ctx)
    engine = make_engine(s.database_url, data_dir=s.data_dir)
    upgrade(engine, revision)
    click.echo(f"database at revision {current(engine)}")
    engine.dispose()


def _engine(s: FleetSettings):  # type: ignore[no-untyped-def]
    from fleet.db import init_db, make_engine

    engine = make_engine(s.database_url, data_dir=s.data_dir)
    init_db(engine)
    return engine


@fleet.group()
def token() -> None:
    """API tokens."""


@token.command("create")
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), required=True,
              help="What the token may do: viewer reads, operator rolls out, admin also manages tokens.")
@click.option("--name", default=None, show_default="ROLE-cli", help="A label for the token (audit log, console).")
@click.pass_context
def token_create(ctx: click.Context, role: str, name: str | None) -> None:
    """Create an API token; it is printed once (only its hash is stored)."""
    from fleet.db import session_scope
    from fleet.registry.auth import create_api_token

    with session_scope(_engine(_settings(ctx))) as s:
        tok, row = create_api_token(s, name or f"{role}-cli", role, "cli")
    click.echo(tok)


@fleet.group("enrol-token")
def enrol_token() -> None:
    """One-time enrolment tokens."""


@enrol_token.command("create")
@click.option("--ttl", type=click.FloatRange(min=1), default=24 * 3600, show_default=True,
              help="Seconds until the unused token expires.")
@click.option("--device-class", default=None, show_default="any",
              help="The class the device must enrol as (e.g. arm64-cortex-a).")
@click.option("--attr", multiple=True, callback=lambda _c, _p, v: _key_values(v),
              help="KEY=VALUE attribute the device gets (repeatable), e.g. region=eu.")
@click.option("--tag", multiple=True, help="Tag the device gets (repeatable).")
@click.pass_context
def enrol_token_create(ctx: click.Context, ttl: float, device_class: str | None, attr: dict[str, str],
                       tag: tuple[str, ...]) -> None:
    """Create a one-time enrolment token; it is printed once (only its hash is stored)."""
    from fleet.db import session_scope
    from fleet.registry.enrolment import create_enrolment_token

    attrs = attr
    with session_scope(_engine(_settings(ctx))) as s:
        tok, _ = create_enrolment_token(s, "cli", ttl_s=ttl, device_class=device_class, tags=list(tag),
                                        attributes=attrs)
    click.echo(tok)


@fleet.group()
def devices() -> None:
    """Device registry."""


@devices.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the devices as JSON.")
@click.pass_context
def devices_list(ctx: click.Context, as_json: bool) -> None:
    """List enrolled devices: id, status, class, installed model, attributes."""
    from sqlmodel import select

    from fleet.db import session_scope
    from fleet.models import Device
    from fleet.registry.enrolment import device_view

    with session_scope(_engine(_settings(ctx))) as s:
        rows = [device_view(d) for d in s.exec(select(Device).order_by(Device.id))]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from edgefleet.ops.output import empty_or, when

    click.echo(empty_or([(d["id"], d["fleet"], d["status"], d["device_class"],
                          f"{d['installed']['name']} v{d['installed']['version']}" if d["installed"] else None,
                          d["online"], when(d["last_seen"]), d["attributes"]) for d in rows],
                        ["id", "fleet", "status", "class", "installed", "online", "last seen", "attributes"],
                        "devices"))


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

    from fleet.catalogue.versions import CatalogueError, add_bundle
    from fleet.db import session_scope
    from fleet.registry.fleet_keys import build_keyring

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


def _key_values(items: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE (e.g. region=eu)", param_hint="'--attr'")
        out[key.strip()] = value
    return out


def main() -> None:
    from edgefleet.errors import run_guarded

    run_guarded(fleet, "fleet")
