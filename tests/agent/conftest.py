"""Shared fixtures for the agent tests (and for other engineers' tests that run real agents).

Session-scoped: fleet keys, tiny real models (ONNX, OpenVINO IR, TFLite) and signed bundles.
Helpers: make_config(...) -> AgentConfig, AgentProcess (a real `python -m agent run` process),
PrivateBroker (a Mosquitto on a free port that a test can stop and restart), Subscriber.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.bundle import build_bundle
from agent.config import AgentConfig, MqttConfig, ServingConfig, TelemetryConfig
from agent.keys import generate_keypair, load_private_key
from tests.agent import models
from tests.waiting import wait_for  # noqa: F401 (the agent tests import it from here)

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
BROKER_URL = "mqtt://127.0.0.1:1883"


# The session fixtures below are imported by other directories' conftests and modules (analytics,
# explain, fleet/test_drift_agreement); pytest gives each importer its own copy, which retrained the
# models and re-signed the bundles there. One value per process instead: keys, models and bundles
# stay consistent (the bundles are signed by these keys) and are made once.
_ONCE: dict[str, Any] = {}


def _once(name: str, make: Any) -> Any:
    if name not in _ONCE:
        _ONCE[name] = make()
    return _ONCE[name]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def fleet_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _once("fleet_keys", lambda: _fleet_keys(tmp_path_factory))


def _fleet_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    priv, pub = generate_keypair(d, "fleet")
    priv2, pub2 = generate_keypair(d, "fleet2")
    rogue, rogue_pub = generate_keypair(d, "rogue")
    build, build_pub = generate_keypair(d, "build")  # bundles: make_config trusts it as the build key
    root, root_pub = generate_keypair(d, "root")  # key lists: make_config pins it as the root key
    return {"priv": priv, "pub": pub, "priv2": priv2, "pub2": pub2, "rogue": rogue, "rogue_pub": rogue_pub,
            "build": build, "build_pub": build_pub, "root": root, "root_pub": root_pub}


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _once("model_files", lambda: _model_files(tmp_path_factory))


def _model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("models")
    m1, m2 = models.train_mlp(seed=0), models.train_mlp(seed=1)
    w1, w2 = models.mlp_weights(m1), models.mlp_weights(m2)
    out: dict[str, Any] = {"weights_v1": w1, "weights_v2": w2}
    out["onnx_v1"] = models.onnx_from_weights(w1, d / "v1" / "model.onnx")
    out["onnx_v2"] = models.onnx_from_weights(w2, d / "v2" / "model.onnx")
    out["onnx_nan"] = models.onnx_from_weights(w2, d / "nan" / "model.onnx", nan_output=True)
    out["openvino_v1"] = models.openvino_from_onnx(out["onnx_v1"], d / "ov" / "model.xml")
    out["tflite_v1"] = models.tflite_from_torch(m1, d / "tfl" / "model.tflite")
    out["baseline_v1"] = models.baseline_for(w1)
    out["baseline_v2"] = models.baseline_for(w2)
    return out


def _bundle(out: Path, files: dict[str, Path], version: int, fmt: str, entry: str, baseline: dict[str, Any],
            key: Path) -> Path:
    build_bundle(out, files, models.manifest_fields(version, fmt, entry, baseline), load_private_key(key))
    return out


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory, model_files: dict[str, Any],
            fleet_keys: dict[str, Path]) -> dict[str, Path]:
    return _once("bundles", lambda: _bundles(tmp_path_factory, model_files, fleet_keys))


def _bundles(tmp_path_factory: pytest.TempPathFactory, model_files: dict[str, Any],
             fleet_keys: dict[str, Path]) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bundles")
    k = fleet_keys["build"]
    mf = model_files
    b = {
        "v1": _bundle(d / "digits-v1.bundle", {"model.onnx": mf["onnx_v1"]}, 1, "onnx", "model.onnx",
                      mf["baseline_v1"], k),
        "v2": _bundle(d / "digits-v2.bundle", {"model.onnx": mf["onnx_v2"]}, 2, "onnx", "model.onnx",
                      mf["baseline_v2"], k),
        "v3": _bundle(d / "digits-v3.bundle", {"model.onnx": mf["onnx_v1"]}, 3, "onnx", "model.onnx",
                      mf["baseline_v1"], k),
        "nan_v4": _bundle(d / "digits-v4-nan.bundle", {"model.onnx": mf["onnx_nan"]}, 4, "onnx", "model.onnx",
                          mf["baseline_v2"], k),
        "rogue_v5": _bundle(d / "digits-v5-rogue.bundle", {"model.onnx": mf["onnx_v2"]}, 5, "onnx", "model.onnx",
                            mf["baseline_v2"], fleet_keys["rogue"]),
        "openvino_v1": _bundle(d / "digits-ov-v1.bundle", {"model.xml": mf["openvino_v1"],
                                                           "model.bin": mf["openvino_v1"].with_suffix(".bin")},
                               1, "openvino", "model.xml", mf["baseline_v1"], k),
        "tflite_v1": _bundle(d / "digits-tfl-v1.bundle", {"model.tflite": mf["tflite_v1"]}, 1, "tflite",
                             "model.tflite", mf["baseline_v1"], k),
    }
    return b


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return _once("digits", models.digits_data)


def make_config(state_dir: Path, fleet_pub: Path | None, *, device_id: str = "dev-1", mqtt_url: str = "",
                window_s: float = 60.0, sample_rate: float = 1.0, unix_socket: str = "", http_port: int = 0,
                **kw: Any) -> AgentConfig:
    """An AgentConfig for tests; `.write(path)` gives a TOML file for `python -m agent run`.
    `fleet_pub` is the fleet key (commands); the build.pub and root.pub next to it (the
    fleet_keys fixture) become the build and root keys unless build_keys/root_keys are given."""
    sibling = {r: [str(Path(fleet_pub).with_name(f"{r}.pub"))] if fleet_pub and
               Path(fleet_pub).with_name(f"{r}.pub").exists() else [] for r in ("build", "root")}
    fields: dict[str, Any] = dict(
        device_id=device_id, state_dir=str(state_dir), trusted_keys=[str(fleet_pub)] if fleet_pub else [],
        build_keys=sibling["build"], root_keys=sibling["root"],
        mqtt=MqttConfig(url=mqtt_url, reconnect_min_s=1, reconnect_max_s=2),
        telemetry=TelemetryConfig(window_s=window_s, sample_rate=sample_rate),
        serving=ServingConfig(unix_socket=unix_socket, http_port=http_port))
    fields.update(kw)
    return AgentConfig(**fields)


@pytest.fixture
def config_factory(tmp_path: Path, fleet_keys: dict[str, Path]) -> Any:
    def factory(name: str = "dev-1", **kw: Any) -> AgentConfig:
        return make_config(tmp_path / name, fleet_keys["pub"], device_id=name, **kw)
    return factory


class AgentProcess:
    """`python -m agent run --config X` in its own process; waits for status.json ready."""

    def __init__(self, config: AgentConfig, config_path: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.config_path = config.write(config_path)
        self.status_path = Path(config.state_dir) / "status.json"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(config.state_dir).with_suffix(".log")

    def start(self, wait: bool = True) -> AgentProcess:
        Path(self.config.state_dir).mkdir(parents=True, exist_ok=True)
        self.status_path.unlink(missing_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([PYTHON, "-m", "agent", "run", "--config", str(self.config_path)],
                                     cwd=REPO, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()
        return self

    def status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return {}

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        def ready() -> Any:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            st = self.status()
            return st if st.get("ready") and st.get("pid") == self.proc.pid else None
        return wait_for(ready, timeout, what=f"agent {self.config.device_id} ready")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode if self.proc else 0


class PrivateBroker:
    """A Mosquitto on a free port, stoppable and restartable (same port) by the test."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> PrivateBroker:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False
        wait_for(up, 10, what="private mosquitto")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def private_broker(tmp_path: Path) -> Any:
    b = PrivateBroker(tmp_path).start()
    yield b
    b.stop()


class Subscriber:
    """Collects messages on a topic filter from a broker (paho, VERSION2 callbacks)."""

    def __init__(self, url: str, topic_filter: str, persistent_id: str | None = None) -> None:
        from urllib.parse import urlparse

        import paho.mqtt.client as mqtt

        u = urlparse(url)
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  protocol=mqtt.MQTTv5, client_id=persistent_id or "")

        def on_connect(c: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
            c.subscribe(topic_filter, qos=1)
            self.connected.set()

        def on_message(c: Any, userdata: Any, msg: Any) -> None:
            with self._lock:
                self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

        def on_disconnect(c: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
            self.connected.clear()

        self.client.on_connect = on_connect
        self.client.on_disconnect = on_disconnect
        self.client.on_message = on_message
        self.client.reconnect_delay_set(1, 2)
        if persistent_id:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            self.client.connect_async(u.hostname, u.port or 1883, clean_start=False, properties=props)
        else:
            self.client.connect_async(u.hostname, u.port or 1883)
        self.client.loop_start()
        wait_for(self.connected.is_set, 10, what="subscriber connected")
        time.sleep(0.2)

    def payloads(self, suffix: str) -> list[dict[str, Any]]:
        with self._lock:
            msgs = list(self.messages)
        out = []
        for t, p, _ in msgs:
            if t.endswith(suffix):
                try:
                    out.append(json.loads(p))
                except ValueError:
                    pass
        return out

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def agent_factory(config_factory: Any) -> Any:
    """In-process agents, stopped at teardown."""
    from agent.daemon import Agent

    made: list[Agent] = []

    def factory(name: str = "dev-1", **kw: Any) -> Agent:
        a = Agent(config_factory(name, **kw)).start()
        made.append(a)
        return a
    yield factory
    for a in made:
        a.stop()


class BundleServer:
    """Serves files over HTTP on 127.0.0.1 with Range support (a stand-in for the fleet's
    artifact endpoint); records the Range headers it saw."""

    def __init__(self, files: dict[str, Path]) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.files = dict(files)
        self.ranges: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                name = self.path.lstrip("/")
                if name not in outer.files:
                    self.send_error(404)
                    return
                data = Path(outer.files[name]).read_bytes()
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                body = data[start:]
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def bundle_server(bundles: dict[str, Path]) -> Any:
    s = BundleServer({p.name: p for p in bundles.values()})
    yield s
    s.close()


def model_ref(bundle: Path, base_url: str, keyring: Any) -> dict[str, Any]:
    """The `model` object of an install/shadow/ab/rollback command for a bundle file."""
    from agent.bundle import verify_bundle

    vb = verify_bundle(bundle, keyring)
    return {"name": vb.name, "version": vb.version, "manifest_sha256": vb.manifest_sha256,
            "bundle_sha256": vb.bundle_sha256, "size": bundle.stat().st_size, "url": f"{base_url}/{bundle.name}"}
