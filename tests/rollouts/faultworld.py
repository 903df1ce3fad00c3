"""A fleet to break on purpose (issue 20): a private mosquitto the test starts and stops, the fleet
server (HTTP, ingest with a persistent session, rollout evaluator) in a child process that can be
killed with SIGKILL or stopped with SIGTERM, optional standalone evaluator processes, PostgreSQL,
and simulated devices (tests/rollouts/simdevice.py: the agent's own protocol, signatures and
sketches) on one paho client that counts every telemetry window it sends.

`python -m tests.rollouts.faultworld SETTINGS.json READY_FILE` is the fleet child process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, select

from agent.keys import Keyring, generate_keypair, load_private_key, public_key_to_b64
from agent.protocol import INGEST_ROOT, ingest_status_topic
from fleet.db import init_db, make_engine
from fleet.ingest.broker import free_port, reachable
from fleet.models import Device, TelemetryWindow
from fleet.rollouts import service
from tests.rollouts.harness import RolloutQueries, add_build
from tests.rollouts.simdevice import Behaviour, SimDevice
from tests.rollouts.simfleet import MqttSimFleet
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


class PrivateBroker:
    """mosquitto on a free port with on-disk persistence, so a stop/start keeps sessions."""

    def __init__(self, tmp: Path) -> None:
        assert MOSQUITTO is not None
        self.port = free_port()
        self.dir = tmp / "mosquitto"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o777)                 # mosquitto started as root drops to its own user
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {self.dir}/\nautosave_interval 1\nmax_queued_messages 100000\n"
                             "max_inflight_messages 0\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateBroker:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "mosquitto.log", "ab"))
        wait_for(lambda: reachable("127.0.0.1", self.port), 10, "private mosquitto")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


class CountingSimFleet(MqttSimFleet):
    """MqttSimFleet that reconnects fast and remembers every telemetry window it published.

    With `hold_until_ingest` (what `agent enrol` sets) it behaves like agent.mqtt_link: device
    messages wait in a list (the outbox) until an ingest worker's retained status says online,
    and that set is forgotten on every reconnect."""

    def __init__(self, *a: Any, hold_until_ingest: bool = False, **kw: Any) -> None:
        super().__init__(*a, **kw)
        import paho.mqtt.client as mqtt

        # devices keep a persistent session, as agents do: commands wait for them at the broker
        old = self._client
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"faultsim-{self.fleet}",
                                   clean_session=False)
        for cb in ("on_subscribe", "on_message"):
            setattr(self._client, cb, getattr(old, cb))
        self._client.on_connect = self._on_connect_hold
        self._client.on_disconnect = lambda *a: self._ingest_online.clear()
        self._client.max_inflight_messages_set(2000)
        self._client.max_queued_messages_set(0)
        self._client.reconnect_delay_set(0.2, 2)
        self.sent: dict[tuple[str, int], Any] = {}   # (device, seq) -> paho MQTTMessageInfo
        self.paused = False
        self.hold = hold_until_ingest
        self.held: list[tuple[str, bytes]] = []
        self._ingest_online: set[str] = set()
        self._hold_lock = threading.Lock()

    def _on_connect_hold(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self._ingest_online.clear()
        self._on_connect(client, userdata, flags, rc, props)
        if self.hold:
            client.subscribe(ingest_status_topic(self.fleet), qos=1)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if not msg.topic.startswith(INGEST_ROOT + "/"):
            super()._on_message(client, userdata, msg)
            return
        try:
            online = bool(msg.payload) and json.loads(msg.payload).get("status") == "online"
        except ValueError:
            online = False
        (self._ingest_online.add if online else self._ingest_online.discard)(msg.topic)
        if online:
            self._send([])

    def _send(self, messages: list[tuple[str, bytes]]) -> None:
        with self._hold_lock:
            if self.hold:
                self.held.extend(m for m in messages if not m[0].endswith("/state"))  # state: retained, direct
                messages = [m for m in messages if m[0].endswith("/state")]
                if self._ingest_online and self._client.is_connected():
                    messages, self.held = messages + self.held, []
            for t, raw in messages:
                info = self._client.publish(t, raw, qos=1, retain=t.endswith("/state"))
                if t.endswith("/telemetry"):
                    p = json.loads(raw)["payload"]
                    self.sent[(p["device"], int(p["seq"]))] = info

    def still_held(self) -> set[tuple[str, int]]:
        with self._hold_lock:
            return {(p["device"], int(p["seq"])) for t, raw in self.held if t.endswith("/telemetry")
                    for p in [json.loads(raw)["payload"]]}

    def handed_over(self) -> set[tuple[str, int]]:
        """Windows the broker acknowledged: from there on, losing one is the fleet's fault."""
        return {k for k, info in list(self.sent.items()) if info._published}   # PUBACK seen (even after NO_CONN)

    def _telemetry_loop(self) -> None:
        nxt = time.time() + self.window_s
        while not self._stop.wait(max(0.0, nxt - time.time())):
            end = nxt
            nxt += self.window_s
            if self.paused:
                continue
            msgs: list[tuple[str, bytes]] = []
            with self.lock:
                for s in self.sims.values():
                    msgs.extend(s.telemetry(end - self.window_s, end))
                self.windows_sent += 1
            self._send(msgs)


class FaultWorld(RolloutQueries):
    def __init__(self, tmp: Path, database_url: str, *, n_devices: int = 8,
                 behaviours: Mapping[int, Behaviour] | None = None, window_s: float = 0.5,
                 fleet_evaluator: bool = True, build_keys: tuple[str, ...] = (),
                 hold_until_ingest: bool = True) -> None:
        self.tmp = tmp
        self.fleet_id = f"ft{uuid.uuid4().hex[:10]}"
        self.database_url = database_url
        self.engine = make_engine(database_url)
        init_db(self.engine)
        self.broker = PrivateBroker(tmp).start()
        self.key_path = tmp / "keys" / "fleet.key"
        generate_keypair(self.key_path.parent, "fleet")
        self.settings_path = tmp / "fleet-settings.json"
        self.port = free_port()       # fixed across restarts: command URLs name it
        self.settings_dict: dict[str, Any] = {
            "data_dir": str(tmp / "fleet"), "database_url": database_url, "mqtt_url": self.broker.url,
            "public_url": f"http://127.0.0.1:{self.port}", "port": self.port,
            "trusted_build_keys": list(build_keys),
            "fleet_id": self.fleet_id, "signing_key_path": str(self.key_path), "embedded_broker": False,
            "api_tokens": {"op": "operator"}, "start_rollouts": fleet_evaluator, "rollout_interval_s": 0.2,
            "ingest": {"session_expiry_s": 120}}
        self.settings_path.write_text(json.dumps(self.settings_dict))
        self.fleet: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.evaluators: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = open(tmp / "fleet.log", "ab")
        fleet_key = load_private_key(self.key_path)
        sims = []
        with Session(self.engine) as s:
            v1 = add_build(s, 1) if n_devices else None
            for v in (2, 3) if n_devices else ():
                add_build(s, v)
            for i in range(n_devices):
                dev_id = f"{self.fleet_id}-d{i:03d}"
                key = Ed25519PrivateKey.generate()
                s.add(Device(id=dev_id, fleet=self.fleet_id, device_class="x86-64-generic",
                             public_key=public_key_to_b64(key.public_key())))
                sims.append(SimDevice(dev_id, key, Keyring.from_public_keys([fleet_key.public_key()]),
                                      installed={"name": "digits", "version": 1,
                                                 "manifest_sha256": v1.manifest_sha256,
                                                 "bundle_sha256": v1.bundle_sha256},
                                      fleet=self.fleet_id, behaviours=behaviours or {}, seed=i))
            s.commit()
        self.sims = {x.device_id: x for x in sims}
        self.start_fleet()
        self.devices = CountingSimFleet(sims, self.fleet_id, port=self.broker.port, window_s=window_s,
                                        hold_until_ingest=hold_until_ingest).start()
        if n_devices:
            wait_for(lambda: self.count(lambda d: d.installed_version == 1) == n_devices, 30, "initial signed states")

    def fleet_settings(self) -> Any:
        """The child's FleetSettings, for uploads from the test process (same data_dir)."""
        return _settings(dict(self.settings_dict))

    # -- processes -------------------------------------------------------------------------
    def start_fleet(self) -> None:
        ready = self.tmp / f"ready-{time.time_ns()}"
        self.fleet = subprocess.Popen([sys.executable, "-m", "tests.rollouts.faultworld", str(self.settings_path),
                                       str(ready)], cwd=REPO, stdout=self.logs, stderr=subprocess.STDOUT,
                                      env={**os.environ, "PYTHONPATH": str(REPO)})
        wait_for(lambda: ready.exists() or self.fleet.poll() is not None, 60, "fleet process")
        assert self.fleet.poll() is None, (self.tmp / "fleet.log").read_text()[-3000:]
        self.url = ready.read_text()

    def kill_fleet(self, sig: int = signal.SIGKILL) -> None:
        assert self.fleet is not None
        self.fleet.send_signal(sig)
        self.fleet.wait(30)
        self.fleet = None

    def restart_fleet(self, sig: int = signal.SIGKILL, pause_s: float = 0.0) -> None:
        self.kill_fleet(sig)
        time.sleep(pause_s)
        self.start_fleet()

    def start_evaluator(self, holder: str) -> None:
        self.evaluators[holder] = subprocess.Popen(
            [sys.executable, "-m", "fleet.rollouts.evaluator", "--database-url", self.database_url,
             "--mqtt-url", self.broker.url, "--key", str(self.key_path), "--interval", "0.2", "--holder", holder,
             "--public-url", "http://fleet.test"],
            cwd=REPO, stdout=self.logs, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})

    def stop(self) -> None:
        self.devices.stop()
        for p in [self.fleet, *self.evaluators.values()]:
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.broker.stop()
        self.logs.close()
        self.engine.dispose()

    # -- operations and reads --------------------------------------------------------------
    def create(self, version: int, percents: tuple[float, ...], **gates: Any) -> int:
        g = {"report_timeout_s": 8, "min_requests": 50, "min_drift_samples": 150, "min_windows": 2,
             "soak_s": 0, **gates}
        spec = {"model_name": "digits", "version": version, "target": {"fleet": self.fleet_id}, "gates": g,
                "waves": [{"name": f"w{i}", "percent": p} for i, p in enumerate(percents)]}
        with Session(self.engine) as s:
            r = service.create_rollout(s, spec, "tester")
            s.commit()
            return r.id

    def count(self, pred: Callable[[Device], bool]) -> int:
        with Session(self.engine) as s:
            return sum(1 for d in s.exec(select(Device).where(Device.fleet == self.fleet_id)) if pred(d))

    def wait_done(self, rid: int, timeout: float = 90) -> Any:
        return wait_for(lambda: (r := self.rollout(rid)).status in ("completed", "paused", "rolled-back") and r,
                        timeout, f"rollout {rid} to finish")

    def installs_accepted(self, version: int) -> Counter:
        """Install commands each device accepted and ran (copies refused as stale do not count)."""
        return Counter(dev for dev, sim in self.sims.items() for c in sim.accepted
                       if c["kind"] == "install" and c["model"]["version"] == version)

    def windows_lost(self, timeout: float = 20.0) -> int:
        """Telemetry windows the devices sent that never reached the database."""
        self.devices.paused = True

        def missing() -> set[tuple[str, int]]:
            with Session(self.engine) as s:
                rows = s.exec(select(TelemetryWindow.device_id, TelemetryWindow.seq)
                              .where(TelemetryWindow.device_id.in_(list(self.sims)))).all()
            return (self.devices.handed_over() | self.devices.still_held()) - {(d, int(q)) for d, q in rows}

        self.missing = missing

        try:
            wait_for(lambda: not missing(), timeout, "every telemetry window stored")
        except AssertionError:
            pass
        lost = len(missing())
        self.devices.paused = False
        return lost


def _settings(cfg: dict[str, Any]) -> Any:
    from fleet.settings import FleetSettings, IngestSettings

    ingest = IngestSettings(**cfg.pop("ingest", {}))
    for k in ("data_dir", "signing_key_path"):
        cfg[k] = Path(cfg[k])
    cfg["trusted_build_keys"] = [Path(p) for p in cfg.get("trusted_build_keys", [])]
    return FleetSettings(**cfg, ingest=ingest)


def _main(argv: list[str]) -> int:
    """The fleet child process: FleetServer until SIGTERM (graceful stop) or SIGKILL."""
    import logging

    from fleet.server import FleetServer

    logging.basicConfig(level=os.environ.get("EDGEFLEET_LOG_LEVEL", "WARNING"))
    settings = _settings(json.loads(Path(argv[0]).read_text()))
    srv = FleetServer(settings, port=settings.port, drift_evaluator=False).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    tmp = Path(argv[1] + ".tmp")
    tmp.write_text(srv.url)
    tmp.rename(argv[1])                       # atomic: the test never reads a half-written file
    stop.wait()
    srv.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
