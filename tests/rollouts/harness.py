"""A small fleet for rollout tests: real fleet tables and the fleet's real ingest Processor
(signature checks included), simulated devices, a fleet key, and an evaluator whose commands
are recorded and delivered to the devices on demand. A virtual clock keeps tests fast and free
of sleeps: every call takes `at`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from agent.keys import Keyring, generate_keypair, load_private_key, public_key_to_b64
from agent.protocol import parse_topic
from fleet.ingest.service import Processor
from fleet.models import Device, ModelVersion
from fleet.rollouts import commands
from fleet.rollouts.evaluator import Evaluator, EvaluatorConfig
from fleet.rollouts.models import Rollout, RolloutCommand, RolloutTarget, RolloutWave
from fleet.settings import FleetSettings
from tests.rollouts.simdevice import Behaviour, SimDevice, drift_baseline

MODEL = "digits"


def add_build(s: Session, version: int, device_class: str = "x86-64-generic") -> ModelVersion:
    sha = f"{version:02d}{device_class}".encode().hex().ljust(64, "0")[:64]
    mv = ModelVersion(name=MODEL, version=version, device_class=device_class, format="onnx", precision="fp32",
                      manifest_sha256=sha, bundle_sha256=sha[::-1], size=1000 + version,
                      artifact_path=f"/tmp/{sha}.bundle",
                      manifest={"model": {"name": MODEL, "version": version}, "drift_baseline": drift_baseline()})
    s.add(mv)
    s.flush()
    return mv


class RolloutQueries:
    """Read-backs from the fleet's tables, shared by the in-memory harness and the MQTT world."""

    engine: Engine
    fleet_id: str | None = None  # set: only this fleet's devices

    def rollout(self, rid: int) -> Rollout:
        with Session(self.engine) as s:
            return s.get(Rollout, rid)

    def waves(self, rid: int) -> list[RolloutWave]:
        with Session(self.engine) as s:
            return list(s.exec(select(RolloutWave).where(RolloutWave.rollout_id == rid)
                               .order_by(RolloutWave.index)))

    def targets(self, rid: int) -> list[RolloutTarget]:
        with Session(self.engine) as s:
            return list(s.exec(select(RolloutTarget).where(RolloutTarget.rollout_id == rid)))

    def commands(self, rid: int | None = None) -> list[RolloutCommand]:
        with Session(self.engine) as s:
            q = select(RolloutCommand)
            if rid is not None:
                q = q.where(RolloutCommand.rollout_id == rid)
            return list(s.exec(q.order_by(RolloutCommand.id)))

    def device(self, dev_id: str) -> Device:
        with Session(self.engine) as s:
            return s.get(Device, dev_id)

    def installed_versions(self) -> dict[str, int | None]:
        q = select(Device)
        if self.fleet_id is not None:
            q = q.where(Device.fleet == self.fleet_id)
        with Session(self.engine) as s:
            return {d.id: d.installed_version for d in s.exec(q)}


@dataclass
class Harness(RolloutQueries):
    engine: Engine
    tmp: Path
    n_devices: int = 20
    behaviours: Mapping[int, Behaviour] = field(default_factory=dict)
    classes: tuple[str, ...] = ("x86-64-generic",)
    silent: Iterable[str] = ()
    record_every_s: float = 0.0

    def __post_init__(self) -> None:
        self.settings = FleetSettings(data_dir=self.tmp / "fleet", fleet_id="default")
        self.processor = Processor(self.settings, self.engine)
        self.key_path = self.tmp / "keys" / "fleet.key"
        if not self.key_path.exists():
            generate_keypair(self.key_path.parent, "fleet")
        self.fleet_key = load_private_key(self.key_path)
        self.publisher = commands.RecordingPublisher()
        self.delivered = 0
        self.sims: dict[str, SimDevice] = {}
        self.builds: dict[tuple[int, str], ModelVersion] = {}
        with Session(self.engine, expire_on_commit=False) as s:
            self.signer = commands.load_signer(s, self.key_path)
            for v in (1, 2, 3):
                for cls in self.classes:
                    self.builds[(v, cls)] = add_build(s, v, cls)
            s.commit()
        silent = set(self.silent)
        for i in range(self.n_devices):
            dev_id = f"dev-{i:04d}"
            cls = self.classes[i % len(self.classes)]
            key = Ed25519PrivateKey.generate()
            v1 = self.builds[(1, cls)]
            sim = SimDevice(dev_id, key, Keyring.from_public_keys([self.fleet_key.public_key()]),
                            installed={"name": MODEL, "version": 1, "manifest_sha256": v1.manifest_sha256,
                                       "bundle_sha256": v1.bundle_sha256},
                            device_class=cls, behaviours=self.behaviours, seed=i)
            self.sims[dev_id] = sim
            with Session(self.engine) as s:
                s.add(Device(id=dev_id, device_class=cls, tags=["edge"] + (["lab"] if i % 2 else []),
                             attributes={"region": "eu" if i % 3 else "us"},
                             public_key=public_key_to_b64(key.public_key())))
                s.commit()
        self.ingest([sim.state() for sim in self.sims.values()])
        for dev_id in silent:
            self.sims[dev_id].silent = True
        self.evaluator = self.make_evaluator()

    def make_evaluator(self, holder: str = "test-evaluator") -> Evaluator:
        with Session(self.engine, expire_on_commit=False) as s:
            signer = commands.load_signer(s, self.key_path)
            s.commit()
        return Evaluator(self.engine, self.publisher, signer,
                         EvaluatorConfig(public_url="http://fleet.test", holder=holder, lease_ttl_s=5,
                                         record_every_s=self.record_every_s))

    # -- message plumbing -------------------------------------------------------------------
    def ingest(self, messages: list[tuple[str, bytes]]) -> None:
        if messages:
            self.processor.process(messages)

    def deliver(self, at: float) -> int:
        """Hand every published command to its device; feed the answers to ingest."""
        new = self.publisher.messages[self.delivered:]
        self.delivered = len(self.publisher.messages)
        out: list[tuple[str, bytes]] = []
        for t, doc in new:
            _, dev, _ = parse_topic(t)
            out.extend(self.sims[dev].handle(json.dumps(doc).encode(), now=at))
        self.ingest(out)
        return len(new)

    def window(self, start: float, end: float) -> None:
        msgs: list[tuple[str, bytes]] = []
        for sim in self.sims.values():
            msgs.extend(sim.telemetry(start, end))
        self.ingest(msgs)

    def cycle(self, at: float, window_s: float = 10.0) -> list[str]:
        """One round: evaluator tick, deliver commands, devices send one telemetry window."""
        actions = self.evaluator.tick(at)
        self.deliver(at)
        self.window(at, at + window_s)
        return actions

    def run(self, rollout_id: int, start: float, max_cycles: int = 40, window_s: float = 10.0,
            until: tuple[str, ...] = ("completed", "paused", "aborted", "awaiting-approval")) -> float:
        at = start
        for _ in range(max_cycles):
            self.cycle(at, window_s)
            at += window_s
            if self.rollout(rollout_id).status in until:
                self.evaluator.tick(at)   # let rollbacks be confirmed
                self.deliver(at)
                self.evaluator.tick(at + 0.1)
                return at
        return at

    # -- reads ----------------------------------------------------------------------------


def spec_dict(version: int = 2, percents: tuple[float, ...] = (5, 25, 100), **gates: Any) -> dict[str, Any]:
    g = {"report_timeout_s": 60, "min_requests": 50, "min_drift_samples": 150, "soak_s": 0, **gates}
    return {"model_name": MODEL, "version": version, "gates": g,
            "waves": [{"name": f"w{i}", "percent": p} for i, p in enumerate(percents)]}


def now0() -> float:
    return float(int(time.time()))
