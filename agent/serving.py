"""The in-process predictor: the active model, the previous one (kept loaded for an instant
rollback) and an optional candidate (shadow or A/B).

A swap is one attribute assignment, so a request reads either the old or the new model and
always finishes on the model it started with; nothing is closed while a request may use it
(runtimes are released by reference counting).
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.confidence import ALL_SLICE, MonitorSpec, Slicer
from agent.features import RawPipeline, load_raw_pipeline
from agent.model_store import InstalledModel
from agent.runtimes.base import Runtime, RuntimeOptions, load_runtime
from agent.spec_check import InputError, TensorSpec, check_inputs, specs_from_manifest
from agent.telemetry import DriftSketcher, WindowStats

if TYPE_CHECKING:
    from agent.interfaces import Probation
    from agent.outcomes import OutcomeStore
    from agent.shadow import ShadowRunner
    from agent.telemetry import Telemetry


class Prediction(dict):  # type: ignore[type-arg]
    """The outputs by name (a plain dict, as before) plus `request_id` for later feedback."""

    request_id: str = ""


class PredictError(Exception):
    """The runtime failed on a valid input."""

    kind = "runtime"


class NoModelError(Exception):
    """No model is installed yet."""

    kind = "no_model"


@dataclass(eq=False)
class LoadedModel:
    installed: InstalledModel
    manifest: dict[str, Any]
    runtime: Runtime
    inputs: list[TensorSpec]
    output_names: list[str]
    sketcher: DriftSketcher
    stats: WindowStats | None = None
    attempts: int = 0
    runtime_errors: int = 0
    probation: int = 0  # requests left under post-swap health watch
    probation_latencies_us: list[float] = field(default_factory=list)
    loaded_at: float = field(default_factory=time.time)
    features: RawPipeline | None = None  # the bundle's raw-input contract (agent/features.py)
    monitor: MonitorSpec | None = None   # confidence, outcomes and slices (manifest `monitoring`)
    slicer: Slicer | None = None

    @property
    def version(self) -> int:
        return self.installed.version

    def run(self, x: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.runtime.run(x)


def load_model(installed: InstalledModel, manifest: dict[str, Any], model_dir: Path,
               options: RuntimeOptions) -> LoadedModel:
    fmt = manifest["model"]["format"]
    runtime = load_runtime(fmt, model_dir / manifest["entrypoint"], options, manifest)
    outputs = [o["name"] for o in manifest.get("outputs", [])] or list(getattr(runtime, "output_names", []))
    try:
        monitor = MonitorSpec.from_manifest(manifest)
    except (KeyError, TypeError, ValueError, AttributeError):  # an odd `monitoring` never stops serving
        monitor = None
    return LoadedModel(installed, manifest, runtime, specs_from_manifest(manifest), outputs,
                       DriftSketcher(manifest.get("drift_baseline"), monitor=monitor), monitor=monitor,
                       slicer=Slicer(monitor) if monitor is not None else None,
                       features=load_raw_pipeline(manifest, model_dir, getattr(options, "threads", 1)))


@dataclass
class Candidate:
    model: LoadedModel
    mode: str  # "shadow" or "ab"
    fraction: float


def _checked_inputs(m: LoadedModel, inputs: Mapping[str, Any] | np.ndarray) -> dict[str, np.ndarray]:
    """Raw features by name go through the model's feature pipeline; then the spec check."""
    try:
        if m.features is not None and m.features.accepts(inputs):  # raw features by name
            inputs, violations = m.features.transform(inputs)
            if violations and m.stats is not None:
                m.stats.data_quality_add(violations)
        return check_inputs(inputs, m.inputs)
    except InputError:
        if m.stats is not None:
            m.stats.error("invalid_input")
        raise


class Predictor:
    """Serves requests from the active model. `probation` (the Lifecycle) hears about a freshly
    switched model's runtime errors and the end of its probation; `shadow` takes the sampled
    requests a shadow candidate re-runs off the request path."""

    def __init__(self, telemetry: Telemetry | None = None, shadow: ShadowRunner | None = None,
                 probation: Probation | None = None) -> None:
        self.active: LoadedModel | None = None
        self.previous: LoadedModel | None = None
        self.candidate: Candidate | None = None
        self.telemetry = telemetry
        self.telemetry_enabled = telemetry is not None
        self.shadow = shadow
        self.probation = probation
        self._rand = random.random
        self.outcomes: OutcomeStore | None = None   # set by the agent: request id -> prediction
        # Request ids: a random per-process prefix and a counter (unique across restarts, ~0.2 us).
        self._rid_prefix = os.urandom(6).hex()
        self._rid_next = itertools.count(1).__next__

    def predict(self, inputs: Mapping[str, Any] | np.ndarray,
                metadata: Mapping[str, Any] | None = None) -> Prediction:
        """Run the active model (or the A/B candidate for its share). Raises InputError,
        PredictError or NoModelError; none of them affects the next request. The result is the
        outputs by name with `.request_id`; `metadata` (e.g. {"region": "eu"}) feeds the slice
        keys the manifest declares."""
        m = self.active
        if m is None:
            raise NoModelError("no model is installed")
        cand = self.candidate
        if cand is not None and cand.mode == "ab" and self._rand() < cand.fraction:
            m = cand.model
        t0 = time.perf_counter_ns()
        x = _checked_inputs(m, inputs)
        outs = self._run(m, x)
        # Read the window's stats only now, right before recording: the window closer swaps them
        # and then waits a moment, which covers the tiny gap between this read and the append.
        stats = m.stats
        rid = f"{self._rid_prefix}-{self._rid_next():x}"
        slicer = m.slicer
        slice_key = slicer.key(metadata, x) if slicer is not None and slicer.enabled else ALL_SLICE
        if self.telemetry_enabled and stats is not None:
            stats.latencies_us.append((time.perf_counter_ns() - t0) / 1000.0)
            tel = self.telemetry
            if tel is not None and tel.sample_budget > 0 and self._rand() < tel.sample_rate:
                tel.sample_budget -= 1
                tel.offer_sample(m, stats, x, outs, (rid, slice_key))
        store = self.outcomes
        if store is not None and m.monitor is not None and m.monitor.output < len(outs):
            store.record(rid, m, outs[m.monitor.output], slice_key)
        if m.probation:
            self._probation_step(m, t0)
        if cand is not None and cand.mode == "shadow" and m is not cand.model and self.shadow is not None \
                and self._rand() < cand.fraction:
            self.shadow.offer(m, x, outs)
        result = Prediction(zip(m.output_names, outs, strict=False))
        result.request_id = rid
        return result

    def _run(self, m: LoadedModel, x: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The runtime call; a failure is counted (and reported to probation) and raised as PredictError."""
        m.attempts += 1
        try:
            return m.runtime.run(x)
        except InputError:  # a check only the runtime can make (e.g. int64 ids into an int32 tensor)
            if m.stats is not None:
                m.stats.error("invalid_input")
            raise
        except Exception as exc:
            m.runtime_errors += 1
            if m.stats is not None:
                m.stats.error("runtime")
            if m.probation and self.probation is not None:
                self.probation.check_probation(m)
            raise PredictError(f"model {m.installed.name} v{m.version} failed: {exc}") from exc

    def _probation_step(self, m: LoadedModel, t0: int) -> None:
        m.probation_latencies_us.append((time.perf_counter_ns() - t0) / 1000.0)
        m.probation -= 1
        if m.probation == 0 and self.probation is not None:
            self.probation.end_probation(m)

    def swap(self, new: LoadedModel) -> LoadedModel | None:
        """Make `new` active; the old active becomes previous (still loaded)."""
        old = self.active
        if old is not new:
            self.previous = old
        self.active = new
        return old
