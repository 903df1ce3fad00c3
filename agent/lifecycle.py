"""Model lifecycle: install = verify, unpack, load, warm up and health-check, then an atomic
switch (pointer file first, then the in-memory swap). The previous model stays loaded for an
instant rollback. A post-swap probation watches the runtime error rate and rolls back locally.

Crash safety: unpacking goes to a temporary folder renamed into place, and the pointer file is
replaced atomically only after the new model loaded and passed its checks, so a kill -9 at any
point leaves the last good model as the one loaded at the next start.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.bundle import BundleError, RollbackApproval
from agent.config import HealthConfig
from agent.device_classes import DeviceClass
from agent.disk_guard import DiskGuard
from agent.interfaces import ModelMonitor, Reporter
from agent.keys import Keyring
from agent.model_store import InstalledModel, ModelStore
from agent.runtimes.base import RuntimeLoadError, RuntimeOptions, RuntimeUnavailable
from agent.serving import Candidate, LoadedModel, Predictor, load_model
from agent.spec_check import example_inputs
from agent.trust import TrustStore
from agent.versions import VersionFloors

log = logging.getLogger(__name__)


class InstallError(Exception):
    """An install failed; `reason` is a short code (bundle reasons, load-failed, health-...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def fault_point(name: str) -> None:
    """Crash-test hook: EDGEFLEET_FAULT_INJECT=<name> kills the process here with SIGKILL."""
    if os.environ.get("EDGEFLEET_FAULT_INJECT") == name:
        log.warning("event=fault-injected point=%s", name)
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class FleetApproval(RollbackApproval):
    """A rollback approval checked against the FLEET keys whatever keyring the bundle verifier
    holds (it verifies the manifest with the build keys): a build key cannot approve a downgrade."""

    fleet: Keyring = field(default_factory=Keyring)

    def check(self, keyring: Keyring, manifest: Any, manifest_sha256: str) -> None:
        super().check(self.fleet, manifest, manifest_sha256)


@dataclass
class HealthPolicy:
    latency_budget_ms: float
    max_error_rate: float
    probation_requests: int
    warmup_runs: int

    @classmethod
    def of(cls, health: HealthConfig, device_class: DeviceClass) -> HealthPolicy:
        """The `[health]` section; a latency budget of 0 takes the device class's."""
        return cls(health.latency_budget_ms or device_class.latency_budget_ms, health.max_error_rate,
                   health.probation_requests, health.warmup_runs)


_START_CHECK = HealthPolicy(0, 1, 0, 1)  # at start and restore: one finite warm-up, no budget


def health_check(model: LoadedModel, policy: HealthPolicy) -> dict[str, Any]:
    """Warm up on spec-shaped inputs; outputs must be finite and p50 latency within budget."""
    x = example_inputs(model.inputs)
    times = []
    outs: list[np.ndarray] = []
    for _ in range(max(1, policy.warmup_runs)):
        t0 = time.perf_counter()
        try:
            outs = model.run(x)
        except Exception as exc:
            raise InstallError("health-runtime-error", f"warm-up inference failed: {exc}") from exc
        times.append((time.perf_counter() - t0) * 1000)
    for name, y in zip(model.output_names, outs, strict=False):
        arr = np.asarray(y)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InstallError("health-non-finite", f"warm-up output {name!r} is not finite (NaN or inf)")
    p50 = float(np.median(times))
    if policy.latency_budget_ms and p50 > policy.latency_budget_ms:
        raise InstallError("health-latency", f"warm-up p50 {p50:.2f} ms exceeds the budget of"
                                             f" {policy.latency_budget_ms:.2f} ms")
    return {"warmup_p50_ms": round(p50, 3)}


class Lifecycle:
    """Installs, switches and rolls back models. Its collaborators are typed: the trust store
    (build keys verify bundles, fleet keys approve rollbacks), a Reporter for events and state
    changes, and a ModelMonitor (telemetry) told which models it reports on."""

    def __init__(self, store: ModelStore, predictor: Predictor, trust: TrustStore, device_class: DeviceClass,
                 health: HealthConfig, report: Reporter, monitor: ModelMonitor,
                 disk: DiskGuard | None = None) -> None:
        self.store = store
        self.predictor = predictor
        self.trust = trust
        self.floors = VersionFloors(store.root / "versions.json")
        self.device_class = device_class
        self.policy = HealthPolicy.of(health, device_class)
        self.report = report
        self.monitor = monitor
        self.options = RuntimeOptions(threads=device_class.threads,
                                      execution_providers=device_class.execution_providers or ("CPUExecutionProvider",))
        self._lock = threading.RLock()
        self.last_rollback_reason: str | None = None
        self.disk = disk or DiskGuard()    # a rollback's pointer write fails soft on a full disk
        self.pointer_pending = False       # the pointer file lags what is served (a full disk)

    # -- loading ------------------------------------------------------------------------------
    def _load(self, inst: InstalledModel) -> LoadedModel:
        try:
            manifest = self.store.manifest_of(inst)
            return load_model(inst, manifest, self.store.path_of(inst), self.options)
        except RuntimeUnavailable as exc:
            raise InstallError("runtime-unavailable", str(exc)) from exc
        except (RuntimeLoadError, OSError, ValueError, KeyError) as exc:
            raise InstallError("load-failed", str(exc)) from exc

    def start(self) -> LoadedModel | None:
        """Load the active model from the pointer; fall back to the previous one if it fails."""
        ptr = self.store.pointer()
        active, previous = ptr["active"], ptr["previous"]
        for inst, role in ((active, "active"), (previous, "previous")):
            if inst is None:
                continue
            try:
                model = self._load(inst)
                health_check(model, _START_CHECK)
            except InstallError as exc:
                log.error("event=start-load-failed version=%s role=%s reason=%s", inst.version, role, exc)
                continue
            try:
                self.floors.record(inst.name, inst.version)  # devices from before per-name floors
            except OSError as exc:  # e.g. a full disk: the next activation records it
                log.warning("event=version-floor-not-saved name=%s reason=%s", inst.name, exc)
            if role == "previous":
                self.store.set_pointer(inst, None)
                self.report.emit_event("local-rollback", reason="active model failed to load at start",
                                       details={"from_version": active.version if active else None, "to_version": inst.version})
            self.predictor.swap(model)
            self.predictor.previous = None
            self.monitor.track(model, "active")
            if role == "active" and previous is not None:
                try:
                    self.predictor.previous = self._load(previous)
                except InstallError as exc:
                    log.warning("event=previous-not-loaded version=%s reason=%s", previous.version, exc)
            log.info("event=model-active name=%s version=%s", inst.name, inst.version)
            self._restore_candidate()
            return model
        return None

    # The candidate survives restarts: candidate.json names its (verified, unpacked) folder.
    @property
    def _candidate_path(self) -> Path:
        return self.store.root / "candidate.json"

    def _restore_candidate(self) -> None:
        import json

        try:
            doc = json.loads(self._candidate_path.read_text())
            inst = InstalledModel(**doc["installed"])
            model = self._load(inst)
            health_check(model, _START_CHECK)
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, InstallError) as exc:
            log.warning("event=candidate-not-restored reason=%s", exc)
            self._candidate_path.unlink(missing_ok=True)
            return
        active = self.predictor.active
        self.monitor.track(model, doc["mode"], **({"active_version": active.version} if active else {}))
        self.predictor.candidate = Candidate(model, doc["mode"], float(doc["fraction"]))
        log.info("event=candidate-restored version=%s mode=%s", inst.version, doc["mode"])

    # -- install ------------------------------------------------------------------------------
    def _floor_for(self, bundle_name: str | None, allow_new_name: bool) -> int | None:
        """The anti-rollback floor for `bundle_name`: the highest version ever accepted under that
        name. A name this device never ran needs a fleet command naming it (or the local
        override), unless the device has run nothing yet (its first model)."""
        a = self.predictor.active
        if not isinstance(bundle_name, str):
            return a.installed.version if a is not None else None
        if not allow_new_name and not self.floors.known(bundle_name) and (self.floors.floors or a is not None):
            raise InstallError("new-name", f"model name {bundle_name!r} was never installed on this device: it needs"
                                           " a fleet-signed command naming it (or `agent install --allow-new-name`)")
        return self.floors.floor(bundle_name)

    def prepare(self, bundle_path: Path, approval: RollbackApproval | None = None,
                allow_new_name: bool = False) -> LoadedModel:
        """Verify, unpack, load and health-check; nothing changes for requests yet."""
        from agent.bundle import read_manifest_unverified

        try:
            mm = read_manifest_unverified(bundle_path).get("model", {})
            name, version = mm.get("name"), mm.get("version")
        except (BundleError, AttributeError):
            name = version = None
        floor = self._floor_for(name, allow_new_name)
        trust = self.trust
        revoked = _revocation(trust, name, version, bundle_path)
        if revoked:  # a retired version, listed by the signed key list (issue 16)
            raise InstallError("revoked", revoked)
        if approval is not None:
            approval = FleetApproval(approval.document, trust.fleet)
        try:
            inst, _vb = self.store.unpack(bundle_path, trust.build, floor, approval)
        except BundleError as exc:
            raise InstallError(exc.reason, str(exc)) from exc
        if inst.name != name:  # the file changed between the two reads
            raise InstallError("malformed", f"bundle name changed while installing ({name!r} -> {inst.name!r})")
        fault_point("after-unpack")
        model = self._load(inst)
        health_check(model, self.policy)
        fault_point("after-load")
        return model

    def install(self, bundle_path: Path, approval: RollbackApproval | None = None,
                command_id: str | None = None, allow_new_name: bool = False,
                override: str | None = None) -> InstalledModel:
        """`allow_new_name`: a fleet command named this model, or (override="local") the operator
        passed the explicit flag; the override is logged and reported as an event."""
        with self._lock:
            if override:
                log.warning("event=local-override kind=allow-new-name bundle=%s", Path(bundle_path).name)
                self.report.emit_event("local-override", command_id=command_id,
                                       reason="install under a new model name allowed by the local operator",
                                       details={"override": "allow-new-name", "bundle": Path(bundle_path).name})
            try:
                model = self.prepare(bundle_path, approval, allow_new_name=allow_new_name)
            except InstallError as exc:
                kind = "bundle-refused" if exc.reason in _BUNDLE_REASONS else "install-failed"
                self.report.emit_event(kind, command_id=command_id, reason=str(exc),
                                       details={"code": exc.reason, "bundle": Path(bundle_path).name})
                raise
            return self.activate(model, command_id)

    def activate(self, model: LoadedModel, command_id: str | None = None) -> InstalledModel:
        with self._lock:
            current = self.predictor.active
            if current is not None and current.installed.manifest_sha256 == model.installed.manifest_sha256:
                return current.installed  # already active: nothing to do
            try:
                self.floors.record(model.installed.name, model.version)  # before the switch: a crash keeps it
            except OSError as exc:
                raise InstallError("state-write-failed", f"cannot record the version floor: {exc}") from exc
            self.store.set_pointer(model.installed, current.installed if current else None)
            fault_point("after-pointer")
            model.probation = self.policy.probation_requests
            model.probation_latencies_us = []
            model.attempts = model.runtime_errors = 0
            self.monitor.track(model, "active")
            self.predictor.swap(model)
            cand = self.predictor.candidate
            if cand is not None and cand.model.installed.manifest_sha256 == model.installed.manifest_sha256:
                self.predictor.candidate = None  # promoted
                self._candidate_path.unlink(missing_ok=True)
            if current is not None:
                self.monitor.untrack(current)
            self.store.gc()
            log.info("event=model-active name=%s version=%s previous=%s", model.installed.name, model.version,
                     current.version if current else None)
            self.report.emit_event("install-ok", command_id=command_id, reason=None,
                                   details={"name": model.installed.name, "version": model.version,
                                            "previous_version": current.version if current else None})
            self.report.changed()
            return model.installed

    # -- rollback -----------------------------------------------------------------------------
    def rollback_to_previous(self, reason: str, command_id: str | None = None, local: bool = True) -> bool:
        """Switch back to the loaded previous model; the failed one is dropped."""
        with self._lock:
            prev, bad = self.predictor.previous, self.predictor.active
            if prev is None or bad is None:
                return False
            # serve the good model first: a full disk must not keep the bad one serving
            prev.probation = 0
            self.monitor.track(prev, "active")
            self.predictor.active = prev
            self.predictor.previous = None
            self.monitor.untrack(bad)
            self.last_rollback_reason = reason
            self.pointer_pending = True
            saved = self.save_pointer()
            log.warning("event=rollback from=%s to=%s reason=%s pointer_saved=%s", bad.version, prev.version,
                        reason, saved)
            if local:
                self.report.emit_event("local-rollback", command_id=command_id, reason=reason,
                                       details={"from_version": bad.version, "to_version": prev.version, "pointer_saved": saved})
            self.report.changed()
            return True

    def save_pointer(self) -> bool:
        """Write a pending pointer (what is served now); on a full disk it stays pending, counted
        by the DiskGuard, and is retried at the next status write. True when none is pending."""
        with self._lock:
            if not self.pointer_pending:
                return True
            active, previous = self.predictor.active, self.predictor.previous

            def write() -> None:
                self.store.set_pointer(active.installed if active else None, previous.installed if previous else None)
            self.pointer_pending = not self.disk.attempt("pointer", write)
            return not self.pointer_pending

    def check_probation(self, model: LoadedModel) -> None:
        """Called on a runtime error during probation: roll back when the error rate is too high."""
        if model is not self.predictor.active or self.predictor.previous is None:
            return
        attempts = max(1, model.attempts)
        rate = model.runtime_errors / attempts
        if model.runtime_errors >= 3 and rate > self.policy.max_error_rate:
            reason = (f"error rate {rate:.2f} after {attempts} requests exceeds {self.policy.max_error_rate:.2f}"
                      f" (version {model.version})")
            threading.Thread(target=self.rollback_to_previous, args=(reason,), daemon=True).start()

    def end_probation(self, model: LoadedModel) -> None:
        """After the probation requests: the served p50 latency must be within the budget."""
        lat = model.probation_latencies_us
        model.probation_latencies_us = []
        if not lat or not self.policy.latency_budget_ms or model is not self.predictor.active:
            return
        p50_ms = float(np.median(lat)) / 1000.0
        if p50_ms > self.policy.latency_budget_ms and self.predictor.previous is not None:
            reason = (f"served p50 latency {p50_ms:.2f} ms over {len(lat)} requests exceeds the budget of"
                      f" {self.policy.latency_budget_ms:.2f} ms (version {model.version})")
            threading.Thread(target=self.rollback_to_previous, args=(reason,), daemon=True).start()

    # -- candidates ---------------------------------------------------------------------------
    def set_candidate(self, bundle_path: Path, mode: str, fraction: float, command_id: str | None = None,
                      allow_new_name: bool = False) -> None:
        with self._lock:
            try:
                model = self.prepare(bundle_path, allow_new_name=allow_new_name)
            except InstallError as exc:
                self.report.emit_event("install-failed", command_id=command_id, reason=str(exc),
                                       details={"code": exc.reason, "mode": mode})
                raise
            self.stop_candidate()
            active = self.predictor.active
            self.monitor.track(model, mode, **({"active_version": active.version} if active else {}))
            self.predictor.candidate = Candidate(model, mode, float(fraction))
            from agent.canonical import canonical_json
            from agent.model_store import write_atomic

            write_atomic(self._candidate_path, canonical_json({"installed": model.installed.to_dict(), "mode": mode,
                                                              "fraction": float(fraction)}))
            self.report.changed()

    def stop_candidate(self) -> None:
        with self._lock:
            cand = self.predictor.candidate
            self.predictor.candidate = None
            self._candidate_path.unlink(missing_ok=True)
            if cand is not None:
                self.monitor.untrack(cand.model)
                self.report.changed()


def _revocation(trust: Any, name: Any, version: Any, bundle_path: Path) -> str | None:
    """Why the signed key list revokes this bundle (retired model version or digest), or None."""
    current = getattr(trust, "current", None)
    if current is None or not getattr(current, "revoked", ()):
        return None
    import hashlib

    with open(bundle_path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return current.revocation(name, version, digest)


_BUNDLE_REASONS = {"revoked", "no-signature", "unknown-key", "bad-signature", "hash-mismatch", "size-mismatch", "extra-file",
                   "missing-file", "unsafe-path", "too-large", "downgrade", "malformed", "new-name", "bad-name",
                   "bad-tensor-spec", "wrong-device-class", "format-mismatch"}

