"""A lightweight simulated device that speaks the agent's protocol (docs/CONTRACTS.md) without a
model: it checks fleet commands with the real agent.protocol.CommandGuard and rollback approvals
with agent.bundle.RollbackApproval, signs its state, events and telemetry with its own key, and
produces telemetry whose latency, errors and predictions depend on the installed version.

Transport-agnostic: `handle()` and `telemetry()` return (topic, bytes) pairs; the unit tests
feed them to the fleet's real ingest Processor, the MQTT tests and the benchmark publish them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle import BundleError, RollbackApproval
from agent.keys import Keyring, key_id, sign_document
from agent.protocol import STATE_SCHEMA, CommandGuard, ProtocolError, topic
from agent.sketches import CategoricalHistogram, FixedBinHistogram, LatencyHistogram
from agent.window_payload import ModelRef, build_window

N_CLASSES = 10
BASE_PRED = np.array([12, 11, 10, 10, 10, 10, 10, 9, 9, 9], dtype=np.float64) / 100.0
FEATURE_EDGES = [-1.0, -0.5, 0.0, 0.5, 1.0]


def drift_baseline(n: int = 10000) -> dict[str, Any]:
    """A manifest drift_baseline matching what good simulated devices report."""
    rng = np.random.default_rng(0)
    h = FixedBinHistogram(FEATURE_EDGES)
    h.add(rng.normal(0.0, 0.7, n))
    return {"version": 1, "n_samples": n,
            "features": [{"name": "f0", **h.to_dict()}],
            "prediction": {"kind": "class", "n_classes": N_CLASSES,
                           "counts": [int(round(p * n)) for p in BASE_PRED]}}


@dataclass
class Behaviour:
    """How a model version behaves on this simulated device."""

    latency_us: float = 2000.0
    error_rate: float = 0.0
    drift: bool = False          # predictions collapse onto one class
    install_fails: bool = False
    shadow_agreement: float = 0.98
    feature_shift: float = 0.0   # input features move away from the baseline (drifted inputs)


@dataclass
class SimDevice:
    device_id: str
    key: Ed25519PrivateKey
    fleet_keyring: Keyring
    installed: dict[str, Any] | None = None
    device_class: str = "x86-64-generic"
    fleet: str = "default"
    behaviours: Mapping[int, Behaviour] = field(default_factory=dict)
    requests_per_window: int = 200
    silent: bool = False          # never answers anything (offline, broken radio)
    seed: int = 0
    seq: int = 0
    previous: dict[str, Any] | None = None
    candidate: dict[str, Any] | None = None
    last_command: dict[str, Any] | None = None
    refused: list[str] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    last_cmd_seq: int = 0
    # True: like agent/commands.py, a copy of an accepted command is answered with the original's
    # result (command-duplicate). False: like older agents, refused as stale with its command id,
    # overwriting last_command (the fleet must not count either as a failure)
    answer_duplicates: bool = True
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.guard = CommandGuard(self.device_id, self.fleet_keyring, self.last_cmd_seq)
        self.rng = np.random.default_rng(abs(hash((self.device_id, self.seed))) % 2**32)

    # -- signed messages -------------------------------------------------------------------
    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _msg(self, kind: str, payload: dict[str, Any]) -> tuple[str, bytes]:
        return topic(self.fleet, self.device_id, kind), json.dumps(sign_document(payload, self.key)).encode()

    def state(self, now: float | None = None) -> tuple[str, bytes]:
        return self._msg("state", {
            "schema": STATE_SCHEMA, "device": self.device_id, "seq": self._next_seq(),
            "time": time.time() if now is None else now, "status": "online", "device_class": self.device_class,
            "agent_version": "sim-0.1", "installed": self.installed, "previous": self.previous,
            "candidate": self.candidate, "last_command": self.last_command,
            "trusted_fleet_keys": sorted(self.fleet_keyring.keys)})

    def event(self, kind: str, command_id: str | None, reason: str | None, now: float,
              details: dict[str, Any] | None = None) -> tuple[str, bytes]:
        return self._msg("events", {"schema": "edgefleet.event/v1", "device": self.device_id,
                                    "seq": self._next_seq(), "time": now, "kind": kind, "command_id": command_id,
                                    "reason": reason, "details": details or {}})

    # -- commands --------------------------------------------------------------------------
    def handle(self, raw: bytes, now: float | None = None) -> list[tuple[str, bytes]]:
        """Check and execute one command; return the messages the device sends in answer."""
        if self.silent:
            return []
        now = time.time() if now is None else now
        doc: Any = None
        try:
            doc = json.loads(raw)
            cmd = self.guard.check(doc, now=now)
        except (ProtocolError, ValueError) as exc:
            reason = getattr(exc, "reason", "malformed")
            self.refused.append(reason)
            inner = doc.get("payload") if isinstance(doc, dict) else None
            cid = inner.get("id") if isinstance(inner, dict) else None
            if reason == "stale" and cid in self.answers and self.answer_duplicates:
                return [self.event("command-duplicate", cid, self.answers[cid].get("reason"), now,
                                   {"duplicate": True, "result": self.answers[cid]["result"], "code": "stale"})]
            if reason == "stale" and cid is not None:
                self.last_command = {"id": cid, "kind": inner.get("kind"), "result": "refused", "reason": reason}
                return [self.event("command-refused", cid, f"stale: {exc}", now, {"code": reason}), self.state(now)]
            return [self.event("command-refused", None, reason, now)]
        self.accepted.append(cmd)
        kind, cid = cmd["kind"], cmd["id"]
        out: list[tuple[str, bytes]] = []
        result, reason, ev = "ok", None, None
        model = cmd.get("model")
        if kind == "install":
            if self.behaviour(model["version"]).install_fails:
                result, reason, ev = "failed", "runtime refused the model", "install-failed"
            else:
                if self.installed and self.installed.get("version") != model["version"]:
                    self.previous = self.installed
                self.installed = _ref(model)
                self.candidate = None
                ev = "install-ok"
        elif kind == "rollback":
            try:
                RollbackApproval(cmd["rollback_approval"]).check(
                    self.fleet_keyring, {"model": {"name": model["name"], "version": model["version"]}},
                    model["manifest_sha256"])
            except (BundleError, KeyError, TypeError) as exc:
                result, reason, ev = "refused", str(exc), "command-refused"
            else:
                self.previous = self.installed
                self.installed = _ref(model)
                self.candidate = None
                ev = "install-ok"
        elif kind in ("shadow", "ab"):
            self.candidate = {"name": model["name"], "version": model["version"], "mode": kind,
                              "fraction": cmd.get("fraction", cmd.get("share"))}
        elif kind == "stop-candidate":
            self.candidate = None
        elif kind == "rotate-key":  # a signed key list; the real agent verifies it (agent.trust.TrustStore)
            from agent.keylist import parse_keylist

            self.fleet_keyring.keys = dict(parse_keylist(cmd["keylist"]).keys.role("fleet").keys)
        self.last_command = {"id": cid, "kind": kind, "result": result, "reason": reason}
        self.answers[cid] = self.last_command
        if ev:
            out.append(self.event(ev, cid, reason, now))
        out.append(self.state(now))
        return out

    def behaviour(self, version: int | None) -> Behaviour:
        return self.behaviours.get(version or -1, Behaviour())

    # -- telemetry -------------------------------------------------------------------------
    def telemetry(self, start: float, end: float) -> list[tuple[str, bytes]]:
        """One window: the active model's message, plus the shadow/ab candidate's."""
        if self.silent or not self.installed:
            return []
        out = [self._window(start, end, self.installed, "active", self.requests_per_window)]
        if self.candidate:
            role = self.candidate["mode"]
            n = max(1, int(self.requests_per_window * float(self.candidate.get("fraction") or 0.1))) \
                if role == "ab" else self.requests_per_window
            out.append(self._window(start, end, self.candidate, role, n))
        return out

    def _window(self, start: float, end: float, model: Mapping[str, Any], role: str, n: int) -> tuple[str, bytes]:
        """One window built by the agent's own code (agent.window_payload.build_window) from agent
        histograms filled with this version's behaviour; failed requests have no latency, as on a device."""
        b = self.behaviour(model["version"])
        latencies = self.rng.lognormal(np.log(b.latency_us), 0.15, n)
        errors = int(self.rng.binomial(n, min(1.0, b.error_rate))) if b.error_rate else 0
        lat = LatencyHistogram()
        lat.record_many(latencies[:n - errors])
        p = np.zeros(N_CLASSES) if b.drift else BASE_PRED.copy()
        if b.drift:
            p[0], p[1] = 0.8, 0.2
        pred = CategoricalHistogram(N_CLASSES, self.rng.multinomial(n, p / p.sum()))
        feat = FixedBinHistogram(FEATURE_EDGES)
        feat.add(self.rng.normal(b.feature_shift, 0.7, n))
        extra: dict[str, Any] = {}
        if role == "shadow":
            agreed = int(self.rng.binomial(n, b.shadow_agreement if not b.drift else 0.3))
            extra["shadow"] = {"compared": n, "agreed": agreed, "active_version": (self.installed or {}).get("version")}
        w = build_window(fleet=self.fleet, device=self.device_id, device_class=self.device_class,
                         model=ModelRef(model["name"], model["version"], role, model.get("manifest_sha256") or ""),
                         start=start, end=end, errors={"invalid_input": 0, "runtime": errors}, latency=lat,
                         sampled=n, resources={"cpu_percent": 10.0, "rss_mb": 50.0, "mem_percent": 1.0,
                                               "temp_c": None},
                         features=[("f0", feat)], prediction=pred, extra=extra)
        w.seq, w.sent_at = self._next_seq(), end
        return self._msg("telemetry", w.to_wire())

    @property
    def trusted_key_ids(self) -> list[str]:
        return sorted(self.fleet_keyring.keys)


def _ref(model: Mapping[str, Any]) -> dict[str, Any]:
    return {k: model.get(k) for k in ("name", "version", "manifest_sha256", "bundle_sha256")}


def key_of(k: Ed25519PrivateKey) -> str:
    return key_id(k)
