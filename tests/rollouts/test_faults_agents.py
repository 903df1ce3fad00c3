"""Issue 20 with real agent processes (`python -m agent run`, compiled ONNX models): a good
version completes with one install per device although its canary is frozen (SIGSTOP, long
enough for the broker to drop it, then SIGCONT: MQTT redelivers) and the fleet is killed with
SIGKILL mid-rollout; the devices' signed last_command never reads a refusal; a bad version then
stops at its canary, which ends back on the good version."""

from __future__ import annotations

import os
import signal
from collections import Counter

import pytest
from sqlmodel import Session, select

from agent.config import AgentConfig, MqttConfig, ServingConfig, TelemetryConfig
from agent.keys import Keyring, generate_keypair, load_private_key, public_key_to_b64
from fleet.catalogue.versions import add_bundle, store_upload
from fleet.models import Device
from fleet.rollouts.models import RolloutTarget
from tests.rollouts.faultworld import MOSQUITTO, FaultWorld
from tests.rollouts.test_real_agents import AgentProc, Traffic, _free_port, built  # noqa: F401 (fixture)
from tests.waiting import wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]
N_AGENTS = 3
GATES = {"report_timeout_s": 25, "min_requests": 40, "min_windows": 2, "latency_slack_us": 50_000,
         "min_drift_samples": 150}


def test_real_agents_survive_a_frozen_canary_and_a_fleet_kill(built, tmp_path, pg_url):  # noqa: F811
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    w = FaultWorld(tmp_path / "world", pg_url, n_devices=0, build_keys=(str(built["build_pub"]),))
    agents: list[AgentProc] = []
    traffic: Traffic | None = None
    try:
        settings = w.fleet_settings()
        with Session(w.engine) as db:
            for v in (1, 2, 3):
                with open(built[f"path{v}"], "rb") as fh:
                    add_bundle(db, settings, store_upload(settings, fh), Keyring.from_files([built["build_pub"]]), "ci")
            db.commit()
        fleet_pub = w.key_path.with_suffix(".pub")
        ports = []
        for i in range(N_AGENTS):
            dev = f"{w.fleet_id}-a{i}"
            dkey, _ = generate_keypair(tmp_path / "device-keys", dev)
            with Session(w.engine) as db:
                db.add(Device(id=dev, fleet=w.fleet_id, device_class="x86-64-generic",
                              public_key=public_key_to_b64(load_private_key(dkey).public_key())))
                db.commit()
            ports.append(_free_port())
            cfg = AgentConfig(device_id=dev, state_dir=str(tmp_path / "agents" / dev), fleet_id=w.fleet_id,
                              device_key=str(dkey), trusted_keys=[str(fleet_pub), str(built["build_pub"])],
                              mqtt=MqttConfig(url=w.broker.url, keepalive_s=2, reconnect_min_s=0.5,
                                              reconnect_max_s=2),
                              telemetry=TelemetryConfig(window_s=1.0, sample_rate=1.0),
                              serving=ServingConfig(http_port=ports[-1]))
            agents.append(AgentProc(cfg, tmp_path / f"{dev}.toml"))
        by_id = {a.cfg.device_id: a for a in agents}
        wait_for(lambda: all(a.status().get("ready") for a in agents), 90, "agents ready")
        wait_for(lambda: w.count(lambda d: d.state_seq > 0) == N_AGENTS, 30, "first signed states")
        traffic = Traffic(ports, built["x"])
        traffic.start()

        r1 = w.create(1, (100,), **GATES)
        assert w.wait_done(r1, 120).status == "completed"

        # a good version: freeze the canary while it installs, kill the fleet in the last wave
        rid = w.create(2, (34, 100), **GATES)
        canary = wait_for(lambda: [t.device_id for t in _targets(w, rid) if t.wave_index == 0
                                   and t.status == "commanded"], 60, "canary commanded")[0]
        os.kill(by_id[canary].proc.pid, signal.SIGSTOP)
        # > 1.5 x keepalive: wait until the broker has dropped it (its own log line), not a fixed 5 s
        dropped = f"Client edgefleet-{w.fleet_id}-{canary} has exceeded timeout"
        wait_for(lambda: dropped in (w.broker.dir / "mosquitto.log").read_text(errors="replace"), 30,
                 "the broker to drop the frozen canary")
        os.kill(by_id[canary].proc.pid, signal.SIGCONT)
        wait_for(lambda: w.rollout(rid).current_wave >= 1 or w.rollout(rid).status != "running", 90, "wave 1")
        w.restart_fleet(signal.SIGKILL)
        r2 = w.wait_done(rid, 120)
        assert r2.status == "completed", (r2.reason or {}).get("summary")
        installs = Counter(c.device_id for c in w.commands(rid) if c.kind == "install")
        assert set(installs.values()) == {1} and len(installs) == N_AGENTS
        assert w.count(lambda d: d.installed_version == 2) == N_AGENTS
        with Session(w.engine) as db:
            for d in db.exec(select(Device).where(Device.fleet == w.fleet_id)):
                assert (d.state or {}).get("last_command", {}).get("result") not in ("refused", "failed"), d.state

        # a bad version stops at its canary, which goes back to v2
        r3 = w.create(3, (34, 100), **GATES)
        r = w.wait_done(r3, 120)
        assert r.status == "paused" and r.current_wave == 0, r.reason
        wait_for(lambda: w.count(lambda d: d.installed_version == 2) == N_AGENTS, 60, "canary back on v2")
        assert traffic.ok > 0
    finally:
        if traffic is not None:
            traffic.stop_ev.set()
        for a in agents:
            a.stop()
        w.stop()


def _targets(w: FaultWorld, rid: int) -> list[RolloutTarget]:
    with Session(w.engine) as s:
        return list(s.exec(select(RolloutTarget).where(RolloutTarget.rollout_id == rid)))
