"""Real agent processes (`python -m agent run`) on compiled ONNX models, the real Mosquitto and
the real fleet server: v1 is rolled out to a fresh fleet, v2 (good) advances through every wave,
v3 (predictions collapse onto one class) is stopped at the canary and rolled back to v2 by a
signed rollback command, forged or replayed commands are refused by the agent, and v4 (NaN
outputs) is stopped at the canary as well."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, select

from agent.bundle import build_bundle
from agent.config import AgentConfig, MqttConfig, ServingConfig, TelemetryConfig
from agent.keys import Keyring, generate_keypair, load_private_key, public_key_to_b64, sign_document
from fleet.catalogue.versions import add_bundle, store_upload
from fleet.models import Device
from fleet.rollouts import service
from fleet.rollouts.assignment import assign_waves
from fleet.rollouts.models import Rollout, RolloutCommand
from fleet.rollouts.spec import RolloutSpec
from fleet.server import FleetServer
from fleet.settings import FleetSettings
from tests.rollouts.mqtt_world import BROKER, require_broker
from tests.waiting import wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
N_AGENTS = 4
# The latency gate is exercised with simulated devices; here a tiny MLP answers in tens of
# microseconds on a shared 2-core box, where p99 is scheduler noise, so only a gross slowdown counts.
GATES = {"report_timeout_s": 20, "min_requests": 40, "min_windows": 2, "latency_slack_us": 50_000}

sys.path.insert(0, str(REPO / "tests" / "agent"))


def _models() -> Any:
    import models  # tests/agent/models.py: tiny digits MLPs exported to ONNX

    return models


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Signed bundles v1, v2 (good), v3 (bad: always answers class 0), v4 (broken: NaN outputs)."""
    m = _models()
    d = tmp_path_factory.mktemp("agent-models")
    priv, pub = generate_keypair(d / "keys", "build")
    key = load_private_key(priv)
    w1, w2 = m.mlp_weights(m.train_mlp(seed=0, epochs=40)), m.mlp_weights(m.train_mlp(seed=1, epochs=40))
    bad = [w2[0], w2[1], np.zeros_like(w2[2]), np.eye(10, dtype=np.float32)[0] * 10]
    out: dict[str, Any] = {"build_priv": priv, "build_pub": pub}
    for v, w, base in ((1, w1, w1), (2, w2, w2), (3, bad, w2), (4, w2, w2)):
        onnx = m.onnx_from_weights(w, d / f"v{v}" / "model.onnx", nan_output=v == 4)
        out[v] = build_bundle(d / f"digits-v{v}.bundle", {"model.onnx": onnx},
                              m.manifest_fields(v, "onnx", "model.onnx", m.baseline_for(base)), key)
        out[f"path{v}"] = d / f"digits-v{v}.bundle"
    out["x"] = m.digits_data()[0]
    return out


class AgentProc:
    def __init__(self, cfg: AgentConfig, path: Path) -> None:
        self.cfg = cfg
        cfg.write(path)
        Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
        self.log = open(Path(cfg.state_dir).with_suffix(".log"), "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(path)], cwd=REPO,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})

    def status(self) -> dict[str, Any]:
        try:
            return json.loads((Path(self.cfg.state_dir) / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


class Traffic(threading.Thread):
    """Apps on the devices: small batches of digits to each agent's local HTTP endpoint."""

    def __init__(self, ports: list[int], x: np.ndarray) -> None:
        super().__init__(daemon=True)
        self.ports, self.x, self.stop_ev = ports, x, threading.Event()
        self.ok = 0

    def run(self) -> None:
        rng = np.random.default_rng(0)
        s = requests.Session()
        while not self.stop_ev.is_set():
            for p in self.ports:
                batch = self.x[rng.integers(0, len(self.x), 8)]
                try:
                    r = s.post(f"http://127.0.0.1:{p}/v1/predict", json={"inputs": {"x": batch.tolist()}}, timeout=5)
                    self.ok += r.status_code == 200
                except requests.RequestException:
                    pass
            self.stop_ev.wait(0.05)


def _free_port() -> int:
    from fleet.ingest.broker import free_port

    return free_port()


def test_rollouts_with_real_agents(built, tmp_path):
    require_broker()
    if shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto"):
        pytest.skip("mosquitto not installed")
    fleet_id = f"ra{os.getpid()}{int(time.time()) % 10000}"
    keys = tmp_path / "keys"
    fleet_priv, fleet_pub = generate_keypair(keys, "fleet")
    settings = FleetSettings(data_dir=tmp_path / "fleet", mqtt_url=f"mqtt://{BROKER[0]}:{BROKER[1]}",
                             fleet_id=fleet_id, signing_key_path=fleet_priv, embedded_broker=False,
                             trusted_build_keys=[built["build_pub"]], api_tokens={"op": "operator"},
                             start_rollouts=True, rollout_interval_s=0.3)
    srv = FleetServer(settings, port=0, drift_evaluator=False).start()
    assert srv.rollout_evaluator is not None      # the fleet server runs the rollout evaluator
    agents: list[AgentProc] = []
    traffic: Traffic | None = None
    try:
        with Session(srv.engine) as db:
            for v in (1, 2, 3, 4):
                with open(built[f"path{v}"], "rb") as fh:
                    spooled = store_upload(settings, fh)
                add_bundle(db, settings, spooled, Keyring.from_files([built["build_pub"]]), "ci")
            db.commit()
        ports = []
        for i in range(N_AGENTS):
            dev = f"{fleet_id}-a{i}"
            state = tmp_path / "agents" / dev
            dkey, _ = generate_keypair(tmp_path / "device-keys", dev)
            with Session(srv.engine) as db:
                db.add(Device(id=dev, fleet=fleet_id, device_class="x86-64-generic",
                              public_key=public_key_to_b64(load_private_key(dkey).public_key())))
                db.commit()
            port = _free_port()
            ports.append(port)
            cfg = AgentConfig(device_id=dev, state_dir=str(state), fleet_id=fleet_id, device_key=str(dkey),
                              trusted_keys=[str(fleet_pub)], build_keys=[str(built["build_pub"])],
                              mqtt=MqttConfig(url=settings.mqtt_url, reconnect_min_s=0.5, reconnect_max_s=2),
                              telemetry=TelemetryConfig(window_s=1.0, sample_rate=1.0),
                              serving=ServingConfig(http_port=port))
            agents.append(AgentProc(cfg, tmp_path / f"{dev}.toml"))
        wait_for(lambda: all(a.status().get("ready") for a in agents), 90, "agents ready")
        wait_for(lambda: _count(srv, fleet_id, lambda d: d.state_seq > 0) == N_AGENTS, 30, "first signed states")
        traffic = Traffic(ports, built["x"])
        traffic.start()

        def roll(version: int, percents: tuple[float, ...]) -> Rollout:
            spec = {"model_name": "digits", "version": version, "target": {"fleet": fleet_id}, "gates": GATES,
                    "waves": [{"name": f"w{i}", "percent": p} for i, p in enumerate(percents)]}
            with Session(srv.engine) as db:
                rid = service.create_rollout(db, spec, "tester").id
                db.commit()
            r = wait_for(lambda: (x := _rollout(srv, rid)).status in ("completed", "paused") and x, 150,
                         f"rollout of v{version}")
            return r

        # 1. a fresh fleet gets v1
        r1 = roll(1, (100,))
        assert r1.status == "completed", (r1.reason["summary"], r1.reason["gates"])
        # 2. a good version advances through every wave
        r2 = roll(2, (25, 100))
        assert r2.status == "completed", (r2.reason["summary"], r2.reason["gates"])
        assert _count(srv, fleet_id, lambda d: d.installed_version == 2) == N_AGENTS
        # 3. a bad version is stopped at the canary and its device is back on v2, with the reason
        spec3 = RolloutSpec.from_dict({"model_name": "digits", "version": 3, "target": {"fleet": fleet_id},
                                       "waves": [{"name": "w0", "percent": 25}, {"name": "w1", "percent": 100}]})
        canary = assign_waves(spec3.assignment_seed, [a.cfg.device_id for a in agents], spec3.waves)[0]
        r3 = roll(3, (25, 100))
        assert r3.status == "paused"
        assert "prediction_drift" in [g["gate"] for g in r3.reason["gates"]], r3.reason
        wait_for(lambda: _count(srv, fleet_id, lambda d: d.installed_version == 2) == N_AGENTS, 60,
                 "canary back on v2")
        with Session(srv.engine) as db:
            cmds = db.exec(select(RolloutCommand).where(RolloutCommand.rollout_id == r3.id)).all()
        assert Counter(c.kind for c in cmds) == Counter({"install": 1, "rollback": 1})
        assert {c.device_id for c in cmds} == set(canary)
        # 4. forged and replayed commands are refused by the real agent
        target = next(a for a in agents if a.cfg.device_id == canary[0])
        last = cmds[-1].document
        forged = sign_document({**last["payload"], "seq": last["payload"]["seq"] + 10, "kind": "stop-candidate"},
                               Ed25519PrivateKey.generate())
        # an old sequence number under a new id, genuinely signed: refused as stale
        stale = sign_document({**last["payload"], "id": "stale-" + last["payload"]["id"]},
                              load_private_key(fleet_priv))
        import paho.mqtt.client as mqtt

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.connect(*BROKER)
        c.loop_start()
        t = f"edgefleet/v1/{fleet_id}/{target.cfg.device_id}/cmd"
        c.publish(t, json.dumps(last), qos=1).wait_for_publish(5)     # a copy of the rollback it ran

        def duplicates() -> list[Any]:
            from fleet.models import DeviceEvent

            with Session(srv.engine) as db:
                return db.exec(select(DeviceEvent).where(DeviceEvent.device_id == target.cfg.device_id,
                                                         DeviceEvent.kind == "command-duplicate")).all()
        dup = wait_for(duplicates, 30, "the duplicate's answer")
        # answered with the original result; the signed state still says the rollback ran
        assert [(e.command_id, e.details.get("result")) for e in dup] == [(last["payload"]["id"], "rolled-back")]
        time.sleep(1.0)
        with Session(srv.engine) as db:
            dev = db.get(Device, target.cfg.device_id)
            assert dev.state["last_command"]["id"] == last["payload"]["id"]
            assert dev.state["last_command"]["result"] == "rolled-back", dev.state["last_command"]
        c.publish(t, json.dumps(stale), qos=1).wait_for_publish(5)
        c.publish(t, json.dumps(forged), qos=1).wait_for_publish(5)
        c.loop_stop()
        c.disconnect()

        def refusals() -> list[str]:
            with Session(srv.engine) as db:
                from fleet.models import DeviceEvent

                return [e.reason or "" for e in db.exec(select(DeviceEvent).where(
                    DeviceEvent.device_id == target.cfg.device_id, DeviceEvent.kind == "command-refused"))]
        got = wait_for(lambda: len(refusals()) >= 2 and refusals(), 30, "agent refusals")
        assert any("stale" in x or "sequence" in x for x in got), got
        assert any("signature" in x or "key" in x for x in got), got
        assert _count(srv, fleet_id, lambda d: d.installed_version == 2) == N_AGENTS
        # 5. a broken version (NaN outputs) is caught too and the canary ends on v2
        with Session(srv.engine) as db:
            service.abort(db, r3.id, "tester")
            db.commit()
        r4 = roll(4, (25, 100))
        assert r4.status == "paused", r4.reason
        assert {"installs", "errors"} & {g["gate"] for g in r4.reason["gates"]}, r4.reason["summary"]
        wait_for(lambda: _count(srv, fleet_id, lambda d: d.installed_version == 2) == N_AGENTS, 60,
                 "broken canary back on v2")
        with Session(srv.engine) as db:
            kinds4 = Counter(c.kind for c in db.exec(select(RolloutCommand).where(RolloutCommand.rollout_id == r4.id)))
        assert kinds4["install"] == 1
    finally:
        if traffic is not None:
            traffic.stop_ev.set()
        for a in agents:
            a.stop()
        srv.stop()


def _rollout(srv: FleetServer, rid: int) -> Rollout:
    with Session(srv.engine) as db:
        return db.get(Rollout, rid)


def _count(srv: FleetServer, fleet_id: str, pred: Any) -> int:
    with Session(srv.engine) as db:
        return sum(1 for d in db.exec(select(Device).where(Device.fleet == fleet_id)) if pred(d))
