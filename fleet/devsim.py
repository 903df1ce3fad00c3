"""Simulated devices that speak the real protocol (signed telemetry/state/events over MQTT),
and small signed bundles with a drift baseline. Used by the demo, the tests and the benchmark."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.canonical import canonical_json
from agent.keys import public_key_to_b64, sign_document
from agent.protocol import EVENT_SCHEMA, STATE_SCHEMA, topic
from agent.sketches import CategoricalHistogram, FixedBinHistogram, LatencyHistogram, build_drift_baseline
from agent.window_payload import ModelRef, build_window


def make_baseline(seed: int = 0, n_features: int = 8, n_samples: int = 5000, n_classes: int = 10) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_samples, n_features)) * np.linspace(1, 2, n_features)
    preds = rng.integers(0, n_classes, size=n_samples)
    return build_drift_baseline(x, preds, input_name="x", max_features=n_features, n_bins=10,
                                prediction_kind="class", n_classes=n_classes)


def make_bundle(out: Path, key: Ed25519PrivateKey, *, name: str = "digits", version: int = 1,
                device_class: str = "x86-64-generic", baseline: dict[str, Any] | None = None,
                parent: str | None = None, payload_bytes: bytes | None = None,
                extra: dict[str, Any] | None = None) -> Any:
    """A signed bundle (the payload is a stand-in file; the fleet never runs the model)."""
    from agent.bundle import build_bundle

    out = Path(out)
    model_file = out.with_suffix(".model.bin")
    model_file.write_bytes(payload_bytes or (b"ONNX-STANDIN" + name.encode() + bytes([version % 256]) * 64))
    fields = {
        "model": {"name": name, "version": version, "device_class": device_class, "format": "onnx",
                  "precision": "fp32"},
        "entrypoint": "model.onnx",
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 8]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 10]}],
        "metrics": {"accuracy": 0.97 - 0.001 * version, "latency_ms_p50": 1.2},
        "provenance": {"source": f"{name}.pt", "parent": parent or (f"{name} v{version - 1}" if version > 1 else None),
                       "dataset_sha256": "ab" * 32, "tools": {"compiler": "0.1.0", "onnx": "1.17"},
                       "lineage": [{"pass": "export", "config": {"opset": 17}},
                                   {"pass": "quantize", "config": {"precision": "fp32"}},
                                   {"pass": "evaluate", "config": {"samples": 500}}]},
        "drift_baseline": baseline if baseline is not None else make_baseline(),
        **(extra or {}),  # further manifest sections (e.g. `explain`)
    }
    vb = build_bundle(out, {"model.onnx": model_file}, fields, key)
    model_file.unlink()
    return vb


def shifted_proportions(counts: list[int], shift: float) -> np.ndarray:
    p = np.asarray(counts, dtype=np.float64) + 1e-9
    p /= p.sum()
    if shift:
        target = np.zeros_like(p)
        target[-1] = 1.0
        p = (1 - shift) * p + shift * target
    return p


@dataclass
class SimDevice:
    device_id: str
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    fleet: str = "default"
    device_class: str = "x86-64-generic"
    seq: int = 0

    @property
    def public_key_b64(self) -> str:
        return public_key_to_b64(self.key.public_key())

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def telemetry(self, rng: np.random.Generator, baseline: dict[str, Any], *, model: str = "digits",
                  version: int = 1, window_start: float = 1764100000.0, window_s: int = 60, n: int = 200,
                  shift: float = 0.0, role: str = "active", errors: int = 0, seq: int | None = None,
                  latency_us: float = 900.0) -> dict[str, Any]:
        """One window built by the agent's own code (agent.window_payload.build_window) from agent
        histograms whose counts are drawn from the baseline, moved by `shift` towards the last bin."""
        feats = [(f["name"], FixedBinHistogram(f["edges"], rng.multinomial(n, shifted_proportions(f["counts"], shift))))
                 for f in baseline["features"]]
        pred_b = baseline["prediction"]
        pred = CategoricalHistogram(pred_b["n_classes"], rng.multinomial(n, shifted_proportions(pred_b["counts"], shift)))
        lat = LatencyHistogram()
        lat.record_many(rng.lognormal(np.log(latency_us), 0.3, size=max(0, n - errors)))
        w = build_window(
            fleet=self.fleet, device=self.device_id, device_class=self.device_class,
            model=ModelRef(model, version, role, "0" * 64), start=window_start, end=window_start + window_s,
            errors={"invalid_input": errors, "runtime": 0}, latency=lat, sampled=n,
            resources={"cpu_percent": float(rng.uniform(5, 40)), "rss_mb": 80.0, "mem_percent": 3.0, "temp_c": None},
            features=feats, prediction=pred)
        w.seq, w.sent_at = self.next_seq() if seq is None else seq, time.time()
        return w.to_wire()

    def state(self, *, installed: dict[str, Any] | None, previous: dict[str, Any] | None = None,
              status: str = "online") -> dict[str, Any]:
        return {"schema": STATE_SCHEMA, "device": self.device_id, "seq": self.next_seq(), "time": time.time(),
                "status": status, "device_class": self.device_class, "agent_version": "0.1.0",
                "installed": installed, "previous": previous, "candidate": None, "last_command": None,
                "trusted_fleet_keys": []}

    def event(self, kind: str, *, command_id: str | None = None, reason: str | None = None) -> dict[str, Any]:
        return {"schema": EVENT_SCHEMA, "device": self.device_id, "seq": self.next_seq(), "time": time.time(),
                "kind": kind, "command_id": command_id, "reason": reason, "details": {}}

    def sign(self, payload: dict[str, Any], key: Ed25519PrivateKey | None = None) -> bytes:
        return canonical_json(sign_document(payload, key or self.key))

    def topic(self, kind: str) -> str:
        return topic(self.fleet, self.device_id, kind)


def enrol(base_url: str, enrol_token: str, dev: SimDevice, attributes: dict[str, Any] | None = None,
          tags: list[str] | None = None) -> dict[str, Any]:
    """Enrol over HTTP the way an agent does."""
    import requests

    r = requests.post(f"{base_url}/api/enrol", json={
        "token": enrol_token, "public_key": dev.public_key_b64, "device_id": dev.device_id,
        "device_class": dev.device_class, "attributes": attributes or {}, "tags": tags or []}, timeout=10)
    r.raise_for_status()
    return r.json()


class MqttPublisher:
    """A real paho client (one connection) that publishes QoS 1 messages and waits for PUBACKs."""

    def __init__(self, host: str, port: int, client_id: str, *, mqtt5: bool = True,
                 will: tuple[str, bytes] | None = None) -> None:
        import paho.mqtt.client as mqtt

        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5 if mqtt5 else mqtt.MQTTv311)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        if will:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self._connected = threading.Event()
        self.client.on_connect = lambda *a: self._connected.set()
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError("publisher could not connect")
        self._pending: list[Any] = []

    def publish(self, t: str, data: bytes, *, retain: bool = False) -> None:
        self._pending.append(self.client.publish(t, data, qos=1, retain=retain))

    def flush(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        for info in self._pending:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        self._pending.clear()

    def close(self, *, clean: bool = True) -> None:
        self.flush()
        if clean:
            self.client.disconnect()
        self.client.loop_stop()


def dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode()
