"""A fleet for the console tests, made with the rollout harness (simulated devices sending the
agent's own signed telemetry through the fleet's real ingest): digits v2 breaches the drift gate
at the canary, so rollout 1 is paused with its canary rolled back; the drift evaluator has run;
one device has gone silent. Served over HTTP by a real werkzeug server on a free port."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session
from werkzeug.serving import make_server

from fleet.app import create_app
from fleet.db import init_db, make_engine
from fleet.drift import alerts
from fleet.models import Device
from fleet.rollouts import service
from fleet.settings import FleetSettings
from tests.rollouts.harness import Harness, now0, spec_dict
from tests.rollouts.simdevice import Behaviour

TOKENS = {"admin-token": "admin", "operator-token": "operator", "viewer-token": "viewer"}
SILENT = "dev-0009"


@dataclass
class ConsoleWorld:
    harness: Harness
    app: Any
    rollout_id: int
    url: str = ""
    _server: Any = None

    def serve(self) -> ConsoleWorld:
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()


def build(tmp: Path, url: str | None = None) -> ConsoleWorld:
    engine = make_engine(url or f"sqlite:///{tmp / 'fleet.db'}")
    init_db(engine)
    h = Harness(engine, tmp, n_devices=10, behaviours={2: Behaviour(drift=True, feature_shift=0.6)})
    start = now0() - 3600
    for i in range(30):   # half an hour of v1 history before the rollout
        h.window(start + 60 * i, start + 60 * (i + 1))
    with Session(engine) as s:
        rid = service.create_rollout(s, spec_dict(percents=(20, 60, 100)), "operator").id
        s.commit()
    end = h.run(rid, now0() - 600)
    assert h.rollout(rid).status == "paused", h.rollout(rid).reason
    with Session(engine) as s:   # drift over the same windows, and one device that went quiet
        h.settings.drift.min_samples = 300   # a canary window holds 400 samples
        alerts.evaluate(s, h.settings)
        d = s.get(Device, SILENT)
        d.last_seen = end - 3600
        s.add(d)
        s.commit()
    settings = FleetSettings(data_dir=tmp / "fleet", api_tokens=TOKENS, signing_key_path=h.key_path,
                             public_url="http://fleet.test")
    return ConsoleWorld(h, create_app(settings, engine=engine), rid)


def wait_until(pred: Any, timeout: float = 10.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False
