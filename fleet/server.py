"""Run the fleet manager: HTTP (werkzeug for development, waitress for production), the ingest
subscriber in-process, a periodic drift evaluator, and an embedded broker when none is around.

Programmatic use (demo, rollout tests):
    srv = FleetServer(load_settings(data_dir=..., api_tokens={"tok": "admin"}), port=0).start()
    srv.url, srv.app, srv.engine, srv.ingest ... srv.stop()
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from fleet.app import create_app, fleet_context
from fleet.ingest.broker import EmbeddedBroker, free_port, reachable, start_embedded_broker
from fleet.settings import FleetSettings

log = logging.getLogger(__name__)


class FleetServer:
    def __init__(self, settings: FleetSettings, *, production: bool = False, port: int | None = None,
                 host: str | None = None, start_ingest: bool | None = None, drift_evaluator: bool = True) -> None:
        self.settings = settings
        self.production = production
        self.host = host or settings.host
        self.port = settings.port if port is None else port
        self.start_ingest = settings.start_ingest if start_ingest is None else start_ingest
        self.drift_evaluator = drift_evaluator
        self.broker: EmbeddedBroker | None = None
        self.rollout_evaluator: Any = None
        self.ingest: Any = None
        self._http: Any = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.app: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def engine(self) -> Any:
        return fleet_context(self.app).engine

    def _resolve_broker(self) -> None:
        if self.settings.mqtt_url:
            return
        if reachable("127.0.0.1", 1883):
            self.settings.mqtt_url = "mqtt://127.0.0.1:1883"
        elif self.settings.embedded_broker:
            self.broker = start_embedded_broker()
            self.settings.mqtt_url = self.broker.url
            log.info("no broker configured or reachable: started embedded %s at %s", self.broker.kind,
                     self.broker.url)

    def start(self) -> FleetServer:
        if self.port == 0:
            self.port = free_port()
        if self.settings.public_url == FleetSettings().public_url:
            self.settings.public_url = self.url
        if self.start_ingest:
            self._resolve_broker()
        self.app = create_app(self.settings)
        fleet_context(self.app).extras["production"] = self.production  # owners required (fleet.catalogue.lifecycle)
        ctx = fleet_context(self.app)
        if self.start_ingest:
            from fleet.ingest.service import IngestService

            self.ingest = IngestService(self.settings, ctx.engine, slot="serve").start()
            ctx.ingest = self.ingest
        if self.settings.start_rollouts and self.settings.mqtt_url:
            self._start_rollouts()
        if self.production:
            from waitress import create_server

            self._http = create_server(self.app, host=self.host, port=self.port, threads=8,
                                       max_request_body_size=self.settings.max_upload_bytes)
            server = self._http

            def run() -> None:
                try:
                    server.run()
                except OSError:  # closing the sockets from stop() ends the loop this way
                    if not self._stop.is_set():
                        raise
        else:
            from werkzeug.serving import make_server

            self._http = make_server(self.host, self.port, self.app, threaded=True)
            run = self._http.serve_forever
        t = threading.Thread(target=run, name="edgefleet-http", daemon=True)
        t.start()
        self._threads.append(t)
        if self.settings.lifecycle.housekeeping_interval_s > 0:  # reviews and retention (issue 16)
            from fleet.catalogue import housekeeping

            self._threads.append(housekeeping.start(ctx, self._stop))
        if self.drift_evaluator and self.settings.drift_interval_s > 0:
            d = threading.Thread(target=self._drift_loop, name="edgefleet-drift", daemon=True)
            d.start()
            self._threads.append(d)
        deadline = time.monotonic() + 10
        while not reachable(self.host, self.port, 0.2) and time.monotonic() < deadline:
            time.sleep(0.05)
        log.info("fleet manager listening on %s (%s)", self.url, "waitress" if self.production else "werkzeug")
        return self

    def _start_rollouts(self) -> None:
        """The staged-rollout evaluator (owned by fleet.rollouts), when that package is present."""
        try:
            from fleet.rollouts.evaluator import start_for_app  # type: ignore[import-not-found]
        except ImportError as exc:
            log.info("rollout evaluator not available (%s)", exc)
            return
        self.rollout_evaluator = start_for_app(self.app, self.settings.rollout_interval_s)

    def _drift_loop(self) -> None:
        from fleet.drift import alerts, retraining

        ctx = fleet_context(self.app)
        while not self._stop.wait(self.settings.drift_interval_s):
            try:
                with ctx.session() as db:
                    new = alerts.evaluate(db, self.settings, since=time.time() - 6 * 3600)
                    opened = [(r.id, r.summary) for r in retraining.check(db, self.settings)]
                for rid, summary in opened:
                    log.warning("retraining request %s opened: %s", rid, summary)
                if new:
                    log.warning("raised %d drift alert(s)", len(new))
            except Exception:  # noqa: BLE001 - keep evaluating next time
                log.exception("drift evaluation failed")

    def serve_forever(self) -> None:
        try:
            while not self._stop.wait(1):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._http is not None:
            if self.production:
                self._http.close()
            else:
                self._http.shutdown()
            self._http = None
        if self.rollout_evaluator is not None:
            try:
                self.rollout_evaluator.stop()
            except Exception:  # noqa: BLE001 - shutting down anyway
                log.exception("rollout evaluator did not stop cleanly")
            self.rollout_evaluator = None
        if self.ingest is not None:
            self.ingest.stop()
            self.ingest = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        if self.app is not None:
            fleet_context(self.app).engine.dispose()
