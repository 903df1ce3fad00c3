"""The agent process: wires config, keys, model store, predictor, telemetry, outbox, MQTT,
commands and the local server together.

`Agent(config).start()` is also the in-process Python API: `agent.predict(inputs)` runs the
active model with input checks and telemetry. The agent serves without a broker (MQTT is
retried in the background) and writes state_dir/status.json (pid, ready, active model, MQTT
connection, local endpoints) whenever something changes, for operators and tests to poll.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent import __version__
from agent.bundle import RollbackApproval
from agent.canonical import canonical_json
from agent.config import AgentConfig, ConfigError
from agent.device_classes import CatalogueError, get_device_class
from agent.disk_guard import DiskGuard
from agent.identity import load_or_create_device_key
from agent.keys import KeyFileError, key_id, public_key_to_b64, sign_document
from agent.lifecycle import Lifecycle
from agent.logs import set_write_error_hook
from agent.model_store import InstalledModel, ModelStore, write_atomic
from agent.names import InvalidName, validate_name
from agent.outbox import open_outbox
from agent.outcomes import Outcomes, UnknownRequest, open_outcomes
from agent.private_files import private_dir
from agent.protocol import EVENT_SCHEMA, STATE_SCHEMA, topic
from agent.resources import ResourceSampler
from agent.serving import LoadedModel, Predictor
from agent.shadow import ShadowRunner
from agent.telemetry import Telemetry
from agent.trust import TrustStore

if TYPE_CHECKING:  # imported where used (start): a device without a broker never loads the MQTT client
    from agent.commands import CommandHandler
    from agent.local_server import LocalServer
    from agent.mqtt_link import MqttLink

log = logging.getLogger("agent")


@dataclass
class TelemetryMonitor:
    """The ModelMonitor the lifecycle tells which models are served: telemetry reports on them,
    and their monitoring spec (manifest `monitoring`) labels later outcomes by version."""

    telemetry: Telemetry
    outcomes: Outcomes | None

    def track(self, model: LoadedModel, role: str, **extra: Any) -> None:
        if self.outcomes is not None and model.monitor is not None:
            self.outcomes.specs[int(model.version)] = model.monitor
        self.telemetry.track(model, role, **extra)

    def untrack(self, model: LoadedModel) -> None:
        self.telemetry.untrack(model)


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.cfg = config
        self.state_dir = config.state_path
        private_dir(self.state_dir)  # 0700: telemetry, keys and credentials live here
        try:
            self.device_class = get_device_class(config.device_class, Path(config.devices_dir) if config.devices_dir
                                                 else None)
        except CatalogueError as exc:
            raise ConfigError(f"field 'device_class': {exc}") from None
        for field, kind, value in (("device_id", "device id", config.device_id),
                                   ("device_class", "device class", self.device_class.name)):
            try:
                validate_name(kind, value)
            except InvalidName as exc:
                raise ConfigError(f"field {field!r}: {exc}") from None
        try:
            self.device_key = load_or_create_device_key(config.device_key_path)
            self.keys = TrustStore(self.state_dir, root_keys=config.root_keys, fleet_keys=config.trusted_keys,
                                   build_keys=config.build_keys)
        except KeyFileError as exc:
            raise ConfigError(f"field 'device_key', 'trusted_keys', 'build_keys' or 'root_keys': {exc}") from None
        self.disk = DiskGuard(self.state_dir)  # a full disk is counted and reported, never fatal
        set_write_error_hook(lambda exc: self.disk.failed("log", exc))
        self._sampler = ResourceSampler()
        self.outbox = open_outbox(config)  # sealed with the storage key
        self.store = ModelStore(self.state_dir, device_class=self.device_class.name,
                                max_bundle_bytes=config.max_bundle_bytes)
        self.telemetry = Telemetry.of(
            config.telemetry, fleet=config.fleet_id, device=config.device_id, device_class=self.device_class.name,
            sink=self._store_telemetry, resources=self._resources, dropped_windows=lambda: self.outbox.dropped_windows)
        self.predictor = Predictor(self.telemetry if config.telemetry.enabled else None)
        self.outcomes = open_outcomes(self.state_dir, config.telemetry, self.disk)
        self.predictor.outcomes = self.outcomes.store if self.outcomes is not None else None
        self.telemetry.outcomes = self.outcomes
        self.shadow = ShadowRunner(self.predictor)
        self.predictor.shadow = self.shadow
        from agent.explain import ExplainRequests

        self.explain_requests = ExplainRequests(self.explain, self, config.telemetry)
        self.lifecycle = Lifecycle(self.store, self.predictor, self.keys, self.device_class, config.health,
                                   report=self, monitor=TelemetryMonitor(self.telemetry, self.outcomes),
                                   disk=self.disk)
        self.predictor.probation = self.lifecycle
        self._load_telemetry_config()
        self.commands: CommandHandler | None = None
        self.link: MqttLink | None = None
        self.server: LocalServer | None = None
        self._status_lock = threading.Lock()
        self._stopped = threading.Event()
        self.started = False

    # -- public API ---------------------------------------------------------------------------
    def start(self) -> Agent:
        from agent.commands import CommandHandler

        self.lifecycle.start()
        commands = self.commands = CommandHandler(self.cfg, self.keys, self.lifecycle, report=self, telemetry=self,
                                                  explain=self.explain_requests)
        if self.cfg.telemetry.enabled:
            self.telemetry.start()
        if self.cfg.serving.unix_socket or self.cfg.serving.http_port:
            from agent.local_server import LocalServer

            self.server = LocalServer.from_config(self, self.cfg.serving)
            self.server.start()
        if self.cfg.mqtt.url:
            from agent.mqtt_link import LinkSettings, MqttLink

            self.link = MqttLink(
                LinkSettings(self.cfg.mqtt, client_id=f"edgefleet-{self.cfg.fleet_id}-{self.cfg.device_id}",
                             fleet=self.cfg.fleet_id, device=self.cfg.device_id),
                self.outbox, on_command=commands.receive, on_connect=self._on_connect)
            self.link.start()
        self.started = True
        self.changed()
        log.info("event=agent-started device=%s fleet=%s class=%s pid=%d", self.cfg.device_id, self.cfg.fleet_id,
                 self.device_class.name, os.getpid())
        return self

    def predict(self, inputs: Any, metadata: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Run the active model. Raises spec_check.InputError, serving.PredictError or NoModelError.
        The result is the outputs by name; its `.request_id` is what `feedback` takes later."""
        out = self.predictor.predict(inputs, metadata)
        if self.explain_requests.remaining:  # a signed `explain` command asked for these (issue 15)
            self.explain_requests.offer(inputs)
        return out

    def feedback(self, request_id: str, label: Any) -> dict[str, Any]:
        """The true label (or value) of an earlier prediction; counted in the next telemetry window
        of the version that made it. Raises outcomes.UnknownRequest (expired, already labelled,
        unknown) or ValueError (a label that does not fit the model)."""
        if self.outcomes is None:
            raise UnknownRequest(request_id)
        return self.outcomes.feedback(request_id, label)

    def explain(self, inputs: Any, top_k: int | None = None) -> dict[str, Any]:
        """Per-feature occlusion attributions from the active model's own runtime (agent/explain.py)."""
        from agent.explain import explain_model
        from agent.serving import NoModelError

        m = self.predictor.active
        if m is None:
            raise NoModelError("no model is installed")
        return explain_model(m, inputs, top_k)

    def install(self, bundle_path: Path | str, rollback_approval: RollbackApproval | None = None,
                allow_new_name: bool = False) -> InstalledModel:
        """A local install. A model name this device never ran needs `allow_new_name` (the
        operator's explicit, audited override) or a fleet-signed command naming it."""
        return self.lifecycle.install(Path(bundle_path), rollback_approval, allow_new_name=allow_new_name,
                                      override="local" if allow_new_name else None)

    def set_telemetry_config(self, window_s: float | None, sample_rate: float | None) -> None:
        """Apply a fleet telemetry-config command and persist it (it outlives restarts)."""
        self.telemetry.set_config(window_s, sample_rate)
        try:
            write_atomic(self.state_dir / "telemetry.json", canonical_json(
                {"window_s": self.telemetry.window_s, "sample_rate": self.telemetry.sample_rate}))
        except OSError as exc:
            if not self.disk.failed("telemetry-config", exc):
                raise

    def _load_telemetry_config(self) -> None:
        import json

        try:
            doc = json.loads((self.state_dir / "telemetry.json").read_text())
            self.telemetry.set_config(float(doc["window_s"]), float(doc["sample_rate"]))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("event=telemetry-config-ignored reason=%s", exc)

    def flush_telemetry(self) -> list[dict[str, Any]]:
        """Close the current window now (tests, shutdown); returns the payloads stored."""
        self.shadow.drain()
        return self.telemetry.close_window()

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.server is not None:
            self.server.stop()
        if self.cfg.telemetry.enabled and self.started:
            self.telemetry.stop(flush=True)
        if self.commands is not None:
            self.commands.stop()
        self.shadow.stop()
        if self.link is not None:
            deadline = time.monotonic() + 3
            while len(self.outbox) and self.link.connected.is_set() and time.monotonic() < deadline:
                time.sleep(0.05)  # give queued windows a moment to reach the broker
            self.link.stop(final_state=self._signed(self._state_payload("offline")))
        self._write_status(ready=False)
        if self.outcomes is not None:
            self.outcomes.store.close()
        self.explain_requests.stop()
        self.outbox.close()
        log.info("event=agent-stopped device=%s", self.cfg.device_id)

    def run_forever(self) -> None:
        """Block until SIGTERM/SIGINT, then stop cleanly."""
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        while not done.wait(timeout=1.0):
            self._write_status()
        self.stop()

    # -- messages -----------------------------------------------------------------------------
    def _signed(self, payload: dict[str, Any]) -> bytes:
        return canonical_json(sign_document(payload, self.device_key))

    def _store_telemetry(self, payload: dict[str, Any]) -> None:
        t = topic(self.cfg.fleet_id, self.cfg.device_id, "telemetry")

        def build(seq: int) -> bytes:
            payload["seq"] = seq
            payload["sent_at"] = round(time.time(), 3)
            return self._signed(payload)

        self._put(t, build, "telemetry")

    def _put(self, t: str, build: Any, kind: str) -> None:
        try:
            self.outbox.put(t, build, kind=kind)
        except Exception as exc:
            if not self.disk.failed("outbox", exc):
                raise
        else:
            self.disk.ok()

    def _resources(self) -> dict[str, Any]:
        return {**self._sampler.sample(), **self.disk.window_report()}

    def emit_event(self, kind: str, command_id: str | None = None, reason: str | None = None,
                   details: dict[str, Any] | None = None) -> None:
        t = topic(self.cfg.fleet_id, self.cfg.device_id, "events")
        log.info("event=%s command_id=%s reason=%s", kind, command_id, reason)

        def build(seq: int) -> bytes:
            return self._signed({"schema": EVENT_SCHEMA, "device": self.cfg.device_id, "seq": seq,
                                 "time": round(time.time(), 3), "kind": kind, "command_id": command_id,
                                 "reason": reason, "details": details or {}})

        self._put(t, build, "event")

    def _state_payload(self, status: str = "online") -> dict[str, Any]:
        p = self.predictor
        cand = p.candidate
        return {
            "schema": STATE_SCHEMA, "device": self.cfg.device_id, "seq": 0, "time": round(time.time(), 3),
            "status": status, "device_class": self.device_class.name, "agent_version": __version__,
            "fleet": self.cfg.fleet_id,
            "device_key": public_key_to_b64(self.device_key.public_key()),
            "installed": p.active.installed.public() if p.active else None,
            "previous": p.previous.installed.public() if p.previous else None,
            "candidate": ({"name": cand.model.installed.name, "version": cand.model.version, "mode": cand.mode,
                           "fraction": cand.fraction, "manifest_sha256": cand.model.installed.manifest_sha256}
                          if cand else None),
            "last_command": self.commands.last_command if self.commands else None,
            "refused_unverified": self.commands.refused_unverified() if self.commands else None,
            "trusted_fleet_keys": self.keys.ids(),
            "keylist_version": self.keys.version,
        }

    def publish_state(self) -> None:
        if self.link is None or not self.link.connected.is_set():
            return
        payload = self._state_payload()
        try:
            payload["seq"] = self.outbox.next_seq()
        except Exception as exc:
            if not self.disk.failed("outbox", exc):
                raise
            return
        self.link.publish_now(self.link.state_topic, self._signed(payload), retain=True)

    def _on_connect(self) -> None:
        self.publish_state()
        self._write_status()

    def changed(self) -> None:
        """The device's state changed (Reporter): publish the retained state, rewrite status.json."""
        self.publish_state()
        self._write_status()

    # -- status file --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        p = self.predictor
        cand = p.candidate
        return {
            "pid": os.getpid(), "device_id": self.cfg.device_id, "fleet_id": self.cfg.fleet_id,
            "device_class": self.device_class.name, "agent_version": __version__,
            "ready": self.started and not self._stopped.is_set(),
            "active": p.active.installed.public() if p.active else None,
            "input_names": [s.name for s in p.active.inputs] if p.active else [],
            "previous": p.previous.installed.public() if p.previous else None,
            "candidate": {"version": cand.model.version, "mode": cand.mode, "fraction": cand.fraction} if cand else None,
            "mqtt_connected": bool(self.link and self.link.connected.is_set()),
            "outbox_pending": len(self.outbox) if not self._stopped.is_set() else None,
            "dropped_windows": self.outbox.dropped_windows if not self._stopped.is_set() else None,
            "last_command": self.commands.last_command if self.commands else None,
            "refused_unverified": self.commands.refused_unverified() if self.commands else None,
            "last_rollback_reason": self.lifecycle.last_rollback_reason,
            "pointer_pending": self.lifecycle.pointer_pending,
            "unix_socket": self.cfg.serving.unix_socket or None,
            "http_port": self.server.http_port if self.server else None,
            "device_key_id": key_id(self.device_key),
            "trusted_fleet_keys": self.keys.ids(),
            **self.disk.health(),
            "updated": round(time.time(), 3),
        }

    def _write_status(self, ready: bool | None = None) -> None:
        self.lifecycle.save_pointer()   # a rollback's pointer that a full disk held back
        st = self.status()
        if ready is not None:
            st["ready"] = ready
        with self._status_lock:
            try:
                write_atomic(self.state_dir / "status.json", canonical_json(st))
            except OSError as exc:  # never fatal: run_forever keeps serving (issue 12: ENOSPC killed it)
                if not self.disk.failed("status", exc):
                    log.warning("event=status-write-failed error=%s", exc)
                return
        if self.disk.ok():
            self._write_status(ready)  # space is back: say so in the file too
