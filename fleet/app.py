"""Flask app factory. Everything a request needs hangs off `fleet_context()`."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app, g, request
from sqlalchemy.engine import Engine
from sqlmodel import Session

from fleet.settings import FleetSettings

log = logging.getLogger(__name__)


@dataclass
class FleetContext:
    """Shared state of one fleet app: settings, engine and hooks (e.g. the in-process ingest)."""

    settings: FleetSettings
    engine: Engine
    bootstrap_token_hashes: dict[str, str] = field(default_factory=dict)
    ingest: Any = None  # fleet.ingest.service.IngestService when running in-process
    extras: dict[str, Any] = field(default_factory=dict)
    read_engine: Engine | None = None  # fleet.db.read_engine: the replica, or the primary read-only

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A read-only session for the dashboard reads (device lists, telemetry, overview, drift):
        on the read replica when `database_read_url` names one, which may lag the primary by a
        moment; never for a read that must see the caller's own write, nor for auth or rollouts."""
        with Session(self.read_engine or self.engine) as s:
            yield s

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        from fleet.db import session_scope

        with session_scope(self.engine) as s:
            yield s

    def device_changed(self, device_id: str) -> None:
        """Tell an in-process ingest to forget its cached copy (decommission takes effect now)."""
        if self.ingest is not None:
            self.ingest.forget_device(device_id)


def fleet_context(app: Flask | None = None) -> FleetContext:
    return (app or current_app).extensions["edgefleet"]


BLUEPRINTS = (
    "fleet.api.devices:bp",
    "fleet.api.explain:bp",
    "fleet.api.data_quality:bp",
    "fleet.api.enrol:bp",
    "fleet.api.mqtt_auth:bp",
    "fleet.api.retraining:bp",
    "fleet.api.outcomes:bp",
    "fleet.api.models:bp",
    "fleet.api.lifecycle:bp",
    "fleet.api.telemetry:bp",
    "fleet.api.drift:bp",
    "fleet.api.profiles:bp",
    "fleet.api.admin:bp",
    "fleet.catalogue.artifacts:bp",
    "fleet.api.openapi:bp",
    "fleet.ops_metrics:bp",
    "fleet.console.views:bp",
    "fleet.console.lifecycle_pages:bp",
)


def _load(spec: str) -> Any:
    import importlib

    mod, _, attr = spec.partition(":")
    return getattr(importlib.import_module(mod), attr)


def create_app(settings: FleetSettings | None = None, *, engine: Engine | None = None,
               init: bool = True) -> Flask:
    """Build the fleet app. `init` migrates the database to head first."""
    from agent.private_files import private_dir
    from fleet.db import init_db, make_engine, read_engine
    from fleet.errors import register_error_handlers
    from fleet.registry.auth import hash_token

    settings = settings or FleetSettings()
    private_dir(settings.data_dir)  # 0700: database, keys and the artifact store live here
    engine = engine or make_engine(settings.database_url, data_dir=settings.data_dir)
    if init:
        init_db(engine)
    from fleet.api.validation import JSON_MAX_BYTES, IdConverter, check_url

    app = Flask(__name__, static_folder=None)
    app.url_map.converters["int"] = IdConverter  # before any rule: ids beyond the column's range match no route
    # JSON and form bodies: 413 beyond this; POST /api/models raises it to settings.max_upload_bytes.
    app.config.update(SECRET_KEY=settings.secret_key, MAX_CONTENT_LENGTH=JSON_MAX_BYTES,
                      SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax", JSON_SORT_KEYS=False)
    app.extensions["edgefleet"] = FleetContext(
        settings, engine, {hash_token(t): role for t, role in settings.api_tokens.items()},
        read_engine=read_engine(engine, settings.database_read_url))
    register_error_handlers(app)
    for spec in BLUEPRINTS:
        app.register_blueprint(_load(spec))
    try:
        rollouts_bp = _load("fleet.rollouts.api:bp")
    except ImportError as exc:
        log.info("rollout API not available (%s)", exc)
    else:
        app.register_blueprint(rollouts_bp)

    from fleet import ops_metrics

    @app.before_request
    def _start_timer() -> None:
        g.t0 = time.perf_counter()

    app.before_request(check_url)  # NUL / unpaired surrogates in path or query: 400, not a driver error

    @app.after_request
    def _observe(resp):  # type: ignore[no-untyped-def]
        rule = request.url_rule.rule if request.url_rule else "unmatched"
        ops_metrics.observe_request(request.method, rule, resp.status_code, time.perf_counter() - g.get("t0", 0))
        return resp

    return app
