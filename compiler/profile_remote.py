"""`edgefleet compile --profile-on CLASS`: latency measured on an enrolled device of the class
(issue 13 item 8; Qualcomm AI Hub's profile jobs, on your own fleet).

Each candidate becomes a small bundle signed with the build key (the device verifies it as it
verifies any bundle), is posted to the fleet (POST /api/profiles, the operator CLI's ApiClient,
EDGEFLEET_URL / EDGEFLEET_TOKEN or a profile), and the compiler polls GET /api/profiles/<id>
until the device has reported p50/p99, within a bounded time. Errors are one line: no device of
the class online (exit 2), a timeout or a failing fleet (exit 1).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compiler.errors import CompileInputError

EXIT_INPUT, EXIT_FAILED = 2, 1


class RemoteProfileError(CompileInputError):
    """Ends the build (not a FAIL row of one candidate): every candidate would hit it again."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class DeviceLatency:
    p50_ms: float
    p99_ms: float
    device_id: str
    profile_id: str
    details: dict[str, Any]


@dataclass
class RemoteProfiler:
    device_class: str
    signing_key: Any
    work: Path
    client: Any = None  # edgefleet.ops.client.ApiClient
    warmup: int = 5
    runs: int = 50
    timeout_s: float = 300.0
    poll_s: float = 0.5
    _n: int = 0

    def __post_init__(self) -> None:
        if self.client is None:
            from edgefleet.ops.client import OpsError
            from edgefleet.ops.profile import connect

            try:
                self.client = connect(None, None, None, None)
            except OpsError as exc:
                raise RemoteProfileError(f"--profile-on {self.device_class}: {exc}", exc.exit_code) from None

    def check_online(self) -> None:
        """Fail before compiling anything when no device of the class is online."""
        page = self._call("GET", "/api/devices", query={"device_class": self.device_class, "status": "active",
                                                        "limit": 500})
        if not any(d.get("online") for d in (page or {}).get("items", [])):
            raise RemoteProfileError(f"--profile-on {self.device_class}: no device of class {self.device_class}"
                                     f" is online in the fleet at {self.client.url}", EXIT_INPUT)

    def measure(self, art: Any, served: dict[str, Any]) -> DeviceLatency:
        """Sign the candidate as a bundle, have the fleet run it on a device, wait for p50/p99."""
        from agent.bundle import build_bundle
        from compiler.passes import MANIFEST_PRECISION

        self._n += 1
        path = Path(self.work) / f"profile-{self._n}-{art.fmt}-{art.precision}.bundle"
        path.parent.mkdir(parents=True, exist_ok=True)
        build_bundle(path, art.files, {
            "model": {"name": "profile-candidate", "version": 0, "device_class": self.device_class,
                      "format": art.fmt, "precision": MANIFEST_PRECISION.get(art.precision, "fp32")},
            "entrypoint": art.entrypoint, "inputs": served["inputs"], "outputs": served["outputs"],
            "runtime_config": served["runtime_config"], "metrics": {},
            "provenance": {"purpose": "profile-on-device"}, "drift_baseline": {}}, self.signing_key)
        try:
            with open(path, "rb") as fh:
                job = self._call("POST", "/api/profiles", query={"warmup": self.warmup, "runs": self.runs},
                                 stream=fh, length=path.stat().st_size)
        finally:
            path.unlink(missing_ok=True)
        try:
            return self._wait(art, job)
        finally:  # the candidate leaves the fleet's artifact store either way (best effort)
            try:
                self._call("DELETE", f"/api/profiles/{job['id']}")
            except RemoteProfileError:
                pass

    def _wait(self, art: Any, job: dict[str, Any]) -> DeviceLatency:
        deadline = time.monotonic() + self.timeout_s
        while True:
            state = self._call("GET", f"/api/profiles/{job['id']}")
            if state["status"] == "done":
                res = state["result"]
                return DeviceLatency(float(res["p50_ms"]), float(res["p99_ms"]), state["device_id"], job["id"], res)
            if state["status"] in ("failed", "expired"):
                raise RemoteProfileError(f"profiling {art.fmt} {art.precision} on device {state['device_id']}"
                                         f" {state['status']}: {state.get('reason')}")
            if time.monotonic() > deadline:
                raise RemoteProfileError(f"profiling {art.fmt} {art.precision} on device {state['device_id']}:"
                                         f" no result within {self.timeout_s:g}s (profile {job['id']})")
            time.sleep(self.poll_s)

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        from edgefleet.ops.client import OpsError

        try:
            return self.client.call(method, path, **kw).body
        except OpsError as exc:
            code = EXIT_INPUT if exc.code == "no-device-online" else exc.exit_code
            raise RemoteProfileError(f"--profile-on {self.device_class}: {exc}", code) from None


def check_target(cfg: Any, class_names: list[str]) -> None:
    """Before any compile work: the class is one being built and a device of it is online."""
    if cfg.profile_on not in class_names:
        raise RemoteProfileError(f"--profile-on {cfg.profile_on}: not a device class of this build "
                                 f"({', '.join(class_names)}); add --device-class {cfg.profile_on}", EXIT_INPUT)
    RemoteProfiler(cfg.profile_on, None, Path(".")).check_online()


def on_device(evaluate: Any, cfg: Any, signing_key: Any, work: Path) -> Any:
    """The class's Evaluator, with the latency gate measured on a device (DeviceEvaluator)."""
    from dataclasses import fields

    profiler = RemoteProfiler(cfg.profile_on, signing_key, Path(work) / "profiles", warmup=cfg.profile_warmup,
                              runs=cfg.profile_runs, timeout_s=cfg.profile_timeout_s)
    cls = _device_evaluator()
    return cls(**{f.name: getattr(evaluate, f.name) for f in fields(evaluate)}, profiler=profiler)


def _device_evaluator() -> type:
    from dataclasses import dataclass as dc
    from dataclasses import replace

    from agent.canonical import file_sha256
    from compiler.candidates import Evaluator
    from compiler.gates import LATENCY_GATE_NAMES, GateResult
    from compiler.manifest import runtime_manifest

    @dc
    class DeviceEvaluator(Evaluator):  # type: ignore[misc]
        """Quality gated here as always; the latency gate on the device's p99 against the class
        budget (p50 reported beside), recorded in the candidate's lineage."""

        profiler: Any = None

        def __call__(self, art: Any, ctx: Any) -> Any:
            res = super().__call__(art, ctx)
            dev = self.profiler.measure(art, runtime_manifest(art, ctx.onnx_fp32, self.threads))
            budget = self.budgets.max_latency_ms
            gate = GateResult("max-latency-ms", dev.p99_ms, budget, dev.p99_ms <= budget,
                              f"p99 {dev.p99_ms:.3f} ms (p50 {dev.p50_ms:.3f} ms) measured on device {dev.device_id}"
                              f" (budget {budget:.3f} ms)")
            art.lineage.append({"pass": "profile-on-device", "config": {
                "device_class": self.profiler.device_class, "device_id": dev.device_id, "profile_id": dev.profile_id,
                "warmup": self.profiler.warmup, "runs": self.profiler.runs},
                "input_sha256": file_sha256(art.entry_path), "output_sha256": None,
                "metrics": {"p50_ms": dev.p50_ms, "p99_ms": dev.p99_ms,
                            "mean_ms": dev.details.get("mean_ms")}})
            return replace(res, latency_p50_ms=dev.p50_ms, latency_p99_ms=dev.p99_ms, on_target=True, fp32_p50_ms=None,
                           gates=[g for g in res.gates if g.gate not in LATENCY_GATE_NAMES] + [gate],
                           latency_note=f"measured on device {dev.device_id}")

    return DeviceEvaluator
