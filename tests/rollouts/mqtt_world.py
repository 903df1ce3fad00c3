"""A whole fleet on the real Mosquitto: the fleet server (HTTP + in-process ingest), the rollout
evaluator with its MQTT publisher, and a simulated fleet of devices on one paho client. Each
world uses its own fleet id, so topics never mix with other tests on the shared broker."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, select

from agent.keys import Keyring, generate_keypair, load_private_key, public_key_to_b64
from fleet.ingest.broker import reachable
from fleet.models import Device
from fleet.rollouts import service
from fleet.rollouts.evaluator import Evaluator
from fleet.rollouts.models import Rollout
from fleet.server import FleetServer
from fleet.settings import FleetSettings
from tests.rollouts.harness import RolloutQueries, add_build
from tests.rollouts.simdevice import Behaviour, SimDevice
from tests.rollouts.simfleet import MqttSimFleet
from tests.waiting import wait_for

BROKER = ("127.0.0.1", 1883)


def require_broker() -> None:
    if not reachable(*BROKER):
        pytest.skip("Mosquitto is not running at 127.0.0.1:1883 (mosquitto -d -c /etc/mosquitto/mosquitto.conf)")


class MqttWorld(RolloutQueries):
    def __init__(self, tmp: Path, *, n_devices: int = 10, behaviours: Mapping[int, Behaviour] | None = None,
                 silent: tuple[str, ...] = (), database_url: str | None = None, window_s: float = 1.0,
                 evaluator: bool = True) -> None:
        require_broker()
        self.tmp = tmp
        self.fleet_id = f"rt{uuid.uuid4().hex[:10]}"
        self.key_path = tmp / "keys" / "fleet.key"
        if not self.key_path.exists():
            generate_keypair(self.key_path.parent, "fleet")
        self.settings = FleetSettings(data_dir=tmp / "fleet", database_url=database_url,
                                      mqtt_url=f"mqtt://{BROKER[0]}:{BROKER[1]}", fleet_id=self.fleet_id,
                                      api_tokens={"op": "operator", "view": "viewer"},
                                      signing_key_path=self.key_path, embedded_broker=False,
                                      start_rollouts=evaluator, rollout_interval_s=0.2)
        self.window_s = window_s
        self.server: FleetServer | None = None
        self.evaluator: Evaluator | None = None
        self.start_fleet(evaluator)
        fleet_key = load_private_key(self.key_path)
        sims = []
        with Session(self.engine) as s:
            v1 = add_build(s, 1)
            for v in (2, 3):
                add_build(s, v)
            for i in range(n_devices):
                dev_id = f"{self.fleet_id}-d{i:03d}"
                key = Ed25519PrivateKey.generate()
                s.add(Device(id=dev_id, fleet=self.fleet_id, device_class="x86-64-generic",
                             public_key=public_key_to_b64(key.public_key()), attributes={"region": "eu"}))
                sims.append(SimDevice(dev_id, key, Keyring.from_public_keys([fleet_key.public_key()]),
                                      installed={"name": "digits", "version": 1,
                                                 "manifest_sha256": v1.manifest_sha256,
                                                 "bundle_sha256": v1.bundle_sha256},
                                      fleet=self.fleet_id, behaviours=behaviours or {}, seed=i,
                                      silent=dev_id.endswith(silent) if silent else False))
            s.commit()
        self.sims = {x.device_id: x for x in sims}
        self.devices = MqttSimFleet(sims, self.fleet_id, window_s=window_s).start()
        wait_for(lambda: self.count_installed(1) == n_devices - len(silent), 20, "initial signed states")

    @property
    def engine(self) -> Any:
        assert self.server is not None
        return self.server.engine

    def start_fleet(self, evaluator: bool = True) -> None:
        """The fleet server starts the rollout evaluator itself (settings.start_rollouts)."""
        self.server = FleetServer(self.settings, port=0, drift_evaluator=False).start()
        self.evaluator = self.server.rollout_evaluator
        assert (self.evaluator is not None) == evaluator

    def stop_fleet(self) -> None:
        self.evaluator = None
        if self.server is not None:
            self.server.stop()
            self.server = None

    def stop(self) -> None:
        self.devices.stop()
        self.stop_fleet()

    # -- operations and reads -------------------------------------------------------------
    def create(self, spec: dict[str, Any]) -> int:
        spec = {**spec, "target": {**spec.get("target", {}), "fleet": self.fleet_id}}
        with Session(self.engine) as s:
            r = service.create_rollout(s, spec, "tester")
            s.commit()
            return r.id

    def wait_status(self, rid: int, statuses: tuple[str, ...], timeout: float = 60) -> Rollout:
        return wait_for(lambda: (r := self.rollout(rid)).status in statuses and r, timeout,
                        f"rollout {rid} to reach {statuses}")

    def count_installed(self, version: int) -> int:
        with Session(self.engine) as s:
            return len(s.exec(select(Device).where(Device.fleet == self.fleet_id,
                                                   Device.installed_version == version)).all())

