"""The `benchmark` command (issue 13 item 8, profile on real devices): run a compiler candidate on
this device and report its latency, installing nothing.

The candidate is a bundle signed by a BUILD key like any other (a fleet key alone cannot make a
device run code it was not built to run); it is verified and unpacked into a scratch folder,
loaded through agent.runtimes with the runtime config its manifest carries (what would be
served), fed synthetic inputs shaped by its input specs (symbolic dims are 1), run `warmup`
untimed then `runs` timed batch-1 inferences, and deleted. The served model, the version floors
and the active pointer are never touched.
"""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.bundle import BundleError, verify_bundle
from agent.keys import Keyring
from agent.runtimes.base import RuntimeOptions, load_runtime
from agent.spec_check import TensorSpec, specs_from_manifest

if TYPE_CHECKING:
    from agent.commands import CommandHandler

MAX_RUNS, MAX_WARMUP = 2000, 200


class BenchmarkError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class BenchmarkRequest:
    warmup: int = 5
    runs: int = 50

    @classmethod
    def from_command(cls, p: dict[str, Any]) -> BenchmarkRequest:
        w, r = p.get("warmup", 5), p.get("runs", 50)
        if not isinstance(w, int) or not isinstance(r, int) or not 0 <= w <= MAX_WARMUP or not 1 <= r <= MAX_RUNS:
            raise BenchmarkError("malformed", f"benchmark needs warmup in [0, {MAX_WARMUP}] and runs in [1, {MAX_RUNS}]")
        return cls(w, r)


def synthetic_inputs(specs: list[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """One batch-1 input per spec: floats ~ N(0, 1), integers and booleans zero (valid token ids)."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in s.shape)
        if s.dtype.kind == "f":
            out[s.name] = rng.standard_normal(shape).astype(s.dtype)
        else:
            out[s.name] = np.zeros(shape, dtype=s.dtype)
    return out


def run_benchmark(bundle_path: Path, build_keys: Keyring, device_class: str, options: RuntimeOptions,
                  scratch: Path, req: BenchmarkRequest, max_bytes: int | None = None) -> dict[str, Any]:
    """Verify, load, time, delete. Returns the event details (p50_ms, p99_ms, ...)."""
    dest = Path(scratch) / f"bench-{uuid.uuid4().hex[:12]}"
    runtime = None
    try:
        kw: dict[str, Any] = {"max_member_bytes": max_bytes} if max_bytes else {}
        try:
            vb = verify_bundle(bundle_path, build_keys, unpack_to=dest, device_class=device_class, **kw)
        except BundleError as exc:
            raise BenchmarkError(exc.reason, str(exc)) from exc
        m = vb.manifest
        try:
            runtime = load_runtime(m["model"]["format"], dest / m["entrypoint"], options, m)
            x = synthetic_inputs(specs_from_manifest(m))
            for _ in range(req.warmup):
                runtime.run(x)
            times = np.empty(req.runs)
            for i in range(req.runs):
                t0 = time.perf_counter()
                runtime.run(x)
                times[i] = time.perf_counter() - t0
        except BenchmarkError:
            raise
        except Exception as exc:  # a runtime refusing the candidate is the candidate's failure, not ours
            raise BenchmarkError("run-failed", f"{type(exc).__name__}: {exc}") from exc
        ms = times * 1e3
        return {"p50_ms": round(float(np.percentile(ms, 50)), 4), "p99_ms": round(float(np.percentile(ms, 99)), 4),
                "mean_ms": round(float(ms.mean()), 4), "runs": req.runs, "warmup": req.warmup,
                "name": m["model"]["name"], "version": m["model"]["version"], "format": m["model"]["format"],
                "precision": m["model"].get("precision"), "manifest_sha256": vb.manifest_sha256,
                "bundle_sha256": vb.bundle_sha256, "threads": options.threads}
    finally:
        if runtime is not None:
            try:
                runtime.close()
            except Exception:  # noqa: BLE001 - closing must not hide the result
                pass
        shutil.rmtree(dest, ignore_errors=True)
        Path(bundle_path).unlink(missing_ok=True)


def execute(handler: CommandHandler, p: dict[str, Any]) -> None:
    """agent.commands.CommandHandler's `benchmark` kind: fetch the candidate named by the signed
    command, benchmark it, report `benchmark-result` (or `benchmark-failed` with the reason)."""
    from agent.lifecycle import InstallError

    cid, lc = p["id"], handler.lifecycle
    try:
        req = BenchmarkRequest.from_command(p)
        cand = p.get("candidate")
        if not isinstance(cand, dict):
            raise BenchmarkError("malformed", "benchmark command carries no 'candidate'")
        try:
            path = handler.fetch(cand)
        except InstallError as exc:
            raise BenchmarkError(exc.reason, str(exc)) from exc
        details = run_benchmark(path, lc.trust.build, lc.device_class.name, lc.options,
                                handler.downloads, req, handler.max_bundle_bytes)
    except Exception as exc:  # noqa: BLE001 - the fleet is waiting: every failure gets an answer
        code = exc.reason if isinstance(exc, BenchmarkError) else f"internal-{type(exc).__name__}"
        handler.report.emit_event("benchmark-failed", command_id=cid, reason=str(exc), details={"code": code})
        handler.record(p, "failed", str(exc))
        return
    handler.report.emit_event("benchmark-result", command_id=cid, reason=None, details=details)
    handler.record(p, "ok", None)
