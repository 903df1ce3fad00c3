"""A live fleet for the operator CLI: the real fleet server (HTTP on a free port, SQLite in a tmp
dir, in-process ingest and rollout evaluator) on the real Mosquitto, signed bundles for the CLI
to upload, and simulated devices that speak the agent protocol with the agent's own code
(CommandGuard, RollbackApproval, telemetry sketches; tests/rollouts/simdevice.py)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, select

from agent.bundle import build_bundle
from agent.keys import Keyring, generate_keypair, load_private_key, public_key_to_b64
from edgefleet.cli import cli
from fleet.models import Device, ModelVersion
from fleet.server import FleetServer
from fleet.settings import FleetSettings
from tests.rollouts.mqtt_world import BROKER, require_broker
from tests.rollouts.simdevice import Behaviour, SimDevice, drift_baseline
from tests.rollouts.simfleet import MqttSimFleet
from tests.waiting import wait_for

OPERATOR, VIEWER = "cli-operator-token", "cli-viewer-token"


@dataclass
class LiveFleet:
    server: FleetServer
    settings: FleetSettings
    bundles: dict[int, Path]
    tmp: Path
    sims: MqttSimFleet | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def fleet_id(self) -> str:
        return self.settings.fleet_id

    def cli(self, *args: str, token: str | None = OPERATOR, **env: str) -> Result:
        """`edgefleet ARGS` in-process, configured only through the environment, as a user would."""
        base = {"EDGEFLEET_URL": self.url, "EDGEFLEET_TOKEN": token or "",
                "EDGEFLEET_PROFILE": str(self.tmp / "no-profile.toml"), **env}
        return CliRunner().invoke(cli, list(args), env=base, catch_exceptions=False)

    def start_devices(self, n: int, behaviours: Mapping[int, Behaviour]) -> dict[str, SimDevice]:
        """n devices of x86-64-generic running v1 (as uploaded), reporting over MQTT every second."""
        fleet_key = load_private_key(self.settings.signing_key_path)
        with Session(self.server.engine) as s:
            v1 = s.exec(select(ModelVersion).where(ModelVersion.name == "digits", ModelVersion.version == 1)).one()
            installed = {"name": "digits", "version": 1, "manifest_sha256": v1.manifest_sha256,
                         "bundle_sha256": v1.bundle_sha256}
            sims = []
            for i in range(n):
                dev_id = f"{self.fleet_id}-d{i:02d}"
                key = Ed25519PrivateKey.generate()
                s.add(Device(id=dev_id, fleet=self.fleet_id, device_class="x86-64-generic",
                             public_key=public_key_to_b64(key.public_key()), attributes={"region": "eu"}))
                sims.append(SimDevice(dev_id, key, Keyring.from_public_keys([fleet_key.public_key()]),
                                      installed=dict(installed), fleet=self.fleet_id, behaviours=behaviours,
                                      seed=i))
            s.commit()
        self.sims = MqttSimFleet(sims, self.fleet_id, window_s=1.0).start()
        wait_for(lambda: self.count_on(1) == n, 20, "the devices' first signed states")
        return {x.device_id: x for x in sims}

    def count_on(self, version: int) -> int:
        with Session(self.server.engine) as s:
            return len(s.exec(select(Device).where(Device.fleet == self.fleet_id,
                                                   Device.installed_version == version)).all())


def make_bundle(out: Path, key: Ed25519PrivateKey, version: int) -> None:
    """A signed bundle of `digits` whose drift baseline matches what the simulated devices report
    (the payload is a stand-in: the fleet never runs it, the simulated devices do not either)."""
    payload = out.with_suffix(".onnx")
    payload.write_bytes(b"ONNX-STANDIN-digits-" + bytes([version]) * 64)
    build_bundle(out, {"model.onnx": payload}, {
        "model": {"name": "digits", "version": version, "device_class": "x86-64-generic", "format": "onnx",
                  "precision": "fp32"},
        "entrypoint": "model.onnx",
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 8]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 10]}],
        "metrics": {"accuracy": 0.97 - 0.01 * version},
        "provenance": {"source": "digits.pt", "lineage": [{"pass": "export", "config": {"opset": 17}}]},
        "drift_baseline": drift_baseline(),
    }, key)


@pytest.fixture
def live_fleet(tmp_path: Path) -> Iterator[LiveFleet]:
    require_broker()
    build_priv, build_pub = generate_keypair(tmp_path / "keys", "build")
    fleet_priv, _ = generate_keypair(tmp_path / "keys", "fleet")
    settings = FleetSettings(data_dir=tmp_path / "fleet", mqtt_url=f"mqtt://{BROKER[0]}:{BROKER[1]}",
                             fleet_id=f"cli{uuid.uuid4().hex[:10]}", signing_key_path=fleet_priv,
                             trusted_build_keys=[build_pub], api_tokens={OPERATOR: "operator", VIEWER: "viewer"},
                             embedded_broker=False, start_rollouts=True, rollout_interval_s=0.2,
                             drift_interval_s=0)
    settings.drift.min_samples = 200
    build_key = load_private_key(build_priv)
    bundles = {}
    for v in (1, 2, 3):
        bundles[v] = tmp_path / "build" / f"digits-v{v}.bundle"
        bundles[v].parent.mkdir(exist_ok=True)
        make_bundle(bundles[v], build_key, v)
    srv = FleetServer(settings, port=0, drift_evaluator=False).start()
    fleet = LiveFleet(srv, settings, bundles, tmp_path)
    try:
        yield fleet
    finally:
        if fleet.sims is not None:
            fleet.sims.stop()
        srv.stop()


@pytest.fixture
def no_fleet_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No EDGEFLEET_* connection settings from the developer's shell leak into a test."""
    for k in [k for k in os.environ if k.startswith("EDGEFLEET_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return tmp_path


def run_ok(res: Result) -> str:
    assert res.exit_code == 0, res.output
    return res.output


def spec_file(path: Path, data: dict[str, Any]) -> Path:
    import json

    path.write_text(json.dumps(data))
    return path
