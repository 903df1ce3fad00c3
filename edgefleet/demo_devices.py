"""Simulated edge devices for the demo: one agent process per device (enrolled with a one-time
token through `edgefleet agent enrol`, then `edgefleet agent run`), and the local apps that send
them inference requests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import load_config
from agent.enrol import write_config


@dataclass(frozen=True)
class DeviceSpec:
    device_id: str
    device_class: str
    region: str


class DemoAgent:
    """One agent process with its own state directory, keys, class and local HTTP port."""

    def __init__(self, spec: DeviceSpec, workdir: Path, http_port: int) -> None:
        self.spec, self.http_port = spec, http_port
        self.state_dir = workdir / spec.device_id
        self.config_path = workdir / f"{spec.device_id}.toml"
        self.log_path = workdir / f"{spec.device_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def enrol(self, fleet_url: str, token: str) -> None:
        cmd = [sys.executable, "-m", "agent", "enrol", "--fleet-url", fleet_url, "--token", token,
               "--state-dir", str(self.state_dir), "--config-out", str(self.config_path),
               "--device-id", self.spec.device_id, "--device-class", self.spec.device_class,
               "--attr", f"region={self.spec.region}", "--http-port", str(self.http_port)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=self._env, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"enrolment of {self.spec.device_id} failed: {res.stderr.strip()}")
        # Demo tuning: short telemetry windows and full sampling, so gates decide within seconds.
        cfg = load_config(self.config_path, {"telemetry": {"window_s": 1.0, "sample_rate": 1.0},
                                             "mqtt": {"reconnect_min_s": 0.5, "reconnect_max_s": 2.0}})
        write_config(cfg, self.config_path)

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 (owned by the child process for its lifetime)
        self.proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(self.config_path)],
                                     stdout=log, stderr=subprocess.STDOUT, env=self._env)
        log.close()

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.state_dir / "status.json").read_text()))
        except (OSError, ValueError):
            return {}

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@dataclass
class TrafficStats:
    ok: int = 0
    failed: int = 0
    labelled: int = 0  # outcomes fed back through the agents' /v1/feedback
    per_port: dict[int, int] = field(default_factory=dict)


class Traffic(threading.Thread):
    """The apps on the devices: small batches of raw digit images to each agent's local endpoint;
    with `y`, each app later learns the true digits and feeds them back by request id."""

    def __init__(self, ports: list[int], x: np.ndarray, *, y: np.ndarray | None = None, batch: int = 8,
                 period_s: float = 0.05) -> None:
        super().__init__(name="demo-traffic", daemon=True)
        self.ports, self.x, self.y, self.batch, self.period_s = ports, x, y, batch, period_s
        self.stats = TrafficStats()
        self.stop_event = threading.Event()

    @staticmethod
    def _post(port: int, path: str, doc: Any) -> dict[str, Any] | None:
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(doc).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return dict(json.loads(resp.read() or b"{}")) if resp.status == 200 else None
        except (OSError, ValueError):
            return None

    def _send(self, port: int, idx: np.ndarray) -> bool:
        answer = self._post(port, "/v1/predict", {"inputs": self.x[idx].tolist()})
        if answer is None:
            return False
        rid = answer.get("request_id")
        if self.y is not None and rid:  # a batch's rows are "<id>/<row>" (agent/outcomes.py)
            outcomes = [{"request_id": f"{rid}/{i}", "label": int(self.y[j])} for i, j in enumerate(idx)]
            fed = self._post(port, "/v1/feedback", {"outcomes": outcomes})
            self.stats.labelled += int((fed or {}).get("accepted", 0))
        return True

    def run(self) -> None:
        rng = np.random.default_rng(0)
        while not self.stop_event.is_set():
            for port in self.ports:
                ok = self._send(port, rng.integers(0, len(self.x), self.batch))
                if ok:
                    self.stats.ok += 1
                    self.stats.per_port[port] = self.stats.per_port.get(port, 0) + 1
                else:
                    self.stats.failed += 1
            self.stop_event.wait(self.period_s)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)
