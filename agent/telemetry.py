"""Per-window telemetry, aggregated off the hot path.

The hot path (serving.Predictor.predict) only appends a latency to the current WindowStats of
the model it used and, for a sampled fraction of requests, puts (inputs, outputs) on a bounded
queue (dropped, and counted, when full). A background worker turns samples into feature and
prediction histograms on the bundle's baseline edges; a timer thread closes windows: it swaps
in fresh WindowStats, waits for the sample queue to drain, then builds one payload per
(model version, role) and hands it to the sink (the outbox), which adds seq and signature.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.confidence import ConfidenceStats, MonitorSpec, observe, slice_counts
from agent.sketches import (
    CategoricalHistogram,
    ColumnHistograms,
    FeatureExtractor,
    FixedBinHistogram,
    LatencyHistogram,
)
from agent.window_payload import ModelRef, build_window

if TYPE_CHECKING:
    from agent.config import TelemetryConfig
    from agent.outcomes import Outcomes
    from agent.serving import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class WindowStats:
    """Mutable counters for one model in one window. Appends are atomic under the GIL."""

    latencies_us: list[float] = field(default_factory=list)
    folded: LatencyHistogram = field(default_factory=LatencyHistogram)  # latencies already compacted
    errors: dict[str, int] = field(default_factory=lambda: {"invalid_input": 0, "runtime": 0})
    sampled: int = 0
    samples_dropped: int = 0
    compared: int = 0
    agreed: int = 0
    features: list[FixedBinHistogram] | None = None
    prediction: Any = None
    raw: list[dict[str, Any]] = field(default_factory=list)
    confidence: ConfidenceStats | None = None
    records: list[dict[str, Any]] = field(default_factory=list)   # sampled prediction records (no inputs)
    slices: dict[str, int] = field(default_factory=dict)          # sampled predictions per slice key
    data_quality: dict[str, dict[str, int]] = field(default_factory=dict)  # feature -> violation -> count

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def data_quality_add(self, violations: dict[str, dict[str, int]]) -> None:
        from agent.features import merge_violations

        merge_violations(self.data_quality, violations)

    def fold(self) -> None:
        """Move recorded latencies into the histogram so memory stays bounded in long windows.
        Called off the hot path; a request that fetched the old list just before the swap still
        lands in it during the short grace sleep."""
        pending = self.latencies_us
        self.latencies_us = []
        time.sleep(0.001)
        if pending:
            self.folded.record_many(np.asarray(pending, dtype=np.float64))


class DriftSketcher:
    """Feature and prediction histograms for one model, on its baseline's edges."""

    def __init__(self, baseline: dict[str, Any] | None, output_index: int = 0,
                 monitor: MonitorSpec | None = None) -> None:
        self.monitor = monitor
        self.baseline = baseline or None
        self.output_index = output_index
        self.extractor = FeatureExtractor.from_dict(baseline["extractor"]) if baseline else None
        self.columns = ColumnHistograms([f["edges"] for f in baseline["features"]]) if baseline else None

    def new_features(self) -> list[FixedBinHistogram] | None:
        if not self.baseline:
            return None
        return [FixedBinHistogram(f["edges"]) for f in self.baseline["features"]]

    def new_prediction(self) -> Any:
        if not self.baseline or "prediction" not in self.baseline:
            return None
        p = self.baseline["prediction"]
        if p.get("kind") == "class":
            return CategoricalHistogram(int(p["n_classes"]))
        return FixedBinHistogram(p["edges"])

    def add(self, stats: WindowStats, inputs: dict[str, np.ndarray], outputs: list[np.ndarray]) -> None:
        if not self.baseline or self.extractor is None:
            return
        if stats.features is None:
            stats.features = self.new_features()
            stats.prediction = self.new_prediction()
        x = inputs.get(self.extractor.input)
        if x is not None and stats.features:
            assert self.columns is not None
            self.columns.add(stats.features, self.extractor(x))
        if stats.prediction is not None and outputs:
            y = np.asarray(outputs[self.output_index])
            stats.prediction.add(prediction_values(y, isinstance(stats.prediction, CategoricalHistogram)))


def prediction_values(y: np.ndarray, as_class: bool) -> np.ndarray:
    """Class index per sample (argmax of the last axis, or the value itself for label outputs);
    for numeric outputs the value per sample (its L2 norm when it has several)."""
    y = y.reshape(y.shape[0], -1) if y.ndim > 1 else y.reshape(-1, 1)
    if as_class:
        return y[:, 0].astype(np.int64) if y.shape[1] == 1 else y.argmax(axis=1)
    return y[:, 0].astype(np.float64) if y.shape[1] == 1 else np.linalg.norm(y.astype(np.float64), axis=1)


@dataclass
class Tracked:
    model: LoadedModel
    role: str
    extra: dict[str, Any] = field(default_factory=dict)


class Telemetry:
    """Owns window timing and aggregation; `sink(payload)` stores each finished window."""

    def __init__(self, *, fleet: str, device: str, device_class: str, window_s: float, sample_rate: float,
                 sink: Callable[[dict[str, Any]], None], resources: Callable[[], dict[str, Any]],
                 dropped_windows: Callable[[], int] = lambda: 0, raw_samples_per_window: int = 0,
                 queue_size: int = 1024, batch_wait_s: float = 0.02, max_queued_bytes: int = 16 * 2**20,
                 max_samples_per_s: int = 200, records_per_window: int = 100) -> None:
        self.fleet, self.device, self.device_class = fleet, device, device_class
        self.window_s = float(window_s)
        self.sample_rate = float(sample_rate)
        self.raw_samples_per_window = raw_samples_per_window
        self.batch_wait_s = batch_wait_s
        self.max_queued_bytes = max_queued_bytes
        # Drift histograms need a few thousand samples per window, not every request: a budget
        # refilled each second caps the worker's CPU share however fast the model is.
        self.max_samples_per_s = max_samples_per_s
        self.sample_budget = max_samples_per_s
        self._queued_bytes = 0
        self.records_per_window = records_per_window   # sampled prediction records for the backend join
        self.outcomes: Outcomes | None = None           # labelled outcomes by version (agent.outcomes)
        self.sink = sink
        self.resources = resources
        self.dropped_windows = dropped_windows
        self._tracked: dict[int, Tracked] = {}
        self._lock = threading.RLock()
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._kick = threading.Event()
        self.window_start = time.time()
        self._threads: list[threading.Thread] = []
        self._last_refill = time.monotonic()

    @classmethod
    def of(cls, cfg: TelemetryConfig, *, fleet: str, device: str, device_class: str,
           sink: Callable[[dict[str, Any]], None], resources: Callable[[], dict[str, Any]],
           dropped_windows: Callable[[], int] = lambda: 0) -> Telemetry:
        """From the agent's whole [telemetry] section (a new setting needs no wiring in the daemon)."""
        return cls(fleet=fleet, device=device, device_class=device_class, window_s=cfg.window_s,
                   sample_rate=cfg.sample_rate, sink=sink, resources=resources, dropped_windows=dropped_windows,
                   raw_samples_per_window=cfg.raw_samples_per_window if cfg.raw_samples else 0,
                   max_samples_per_s=cfg.max_samples_per_s, records_per_window=cfg.prediction_records_per_window)

    # -- registration -------------------------------------------------------------------------
    def track(self, model: LoadedModel, role: str, **extra: Any) -> None:
        with self._lock:
            if id(model) not in self._tracked or model.stats is None:
                model.stats = WindowStats()  # never reuse stats that were already reported
            self._tracked[id(model)] = Tracked(model, role, extra)

    def untrack(self, model: LoadedModel, final: bool = True) -> None:
        """Stop reporting a model; with final, its partial window is reported at the next close."""
        with self._lock:
            t = self._tracked.get(id(model))
            if t is None:
                return
            if final:
                t.extra["retiring"] = True  # reported once more at the next close, then dropped
            else:
                del self._tracked[id(model)]

    # -- hot path helpers ---------------------------------------------------------------------
    def offer_sample(self, model: LoadedModel, stats: WindowStats, inputs: dict[str, np.ndarray],
                     outputs: list[np.ndarray], meta: tuple[str, str] | None = None) -> None:
        nbytes = sum(v.nbytes for v in inputs.values())
        if self._queued_bytes + nbytes > self.max_queued_bytes:
            stats.samples_dropped += 1
            return
        try:
            self._queue.put_nowait((model, stats, inputs, outputs, meta))
            self._queued_bytes += nbytes  # approximate (no lock): only a memory bound
        except queue.Full:
            stats.samples_dropped += 1

    # -- threads ------------------------------------------------------------------------------
    def start(self) -> None:
        self.window_start = time.time()
        for target, name in ((self._sample_worker, "telemetry-samples"), (self._window_timer, "telemetry-windows")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, flush: bool = True) -> None:
        if flush:
            self.close_window()
        self._stop.set()
        self._kick.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        for t in self._threads:
            t.join(timeout=5)

    def _sample_worker(self) -> None:
        """Process samples in batches: one feature extraction per (model, window) per batch keeps
        the worker's share of the GIL (and so its cost to the hot path) small."""
        while not self._stop.is_set():
            first = self._queue.get()
            items = [first]
            if first is not None:
                time.sleep(self.batch_wait_s)  # let a batch accumulate
                while len(items) < self._queue.maxsize:
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
            try:
                self._process(items)
            except Exception:  # never let one odd sample kill telemetry
                log.exception("event=sample-failed")
            finally:
                freed = sum(sum(v.nbytes for v in it[2].values()) for it in items if it is not None)
                self._queued_bytes = max(0, self._queued_bytes - freed)
                for _ in items:
                    self._queue.task_done()

    def _process(self, items: list[tuple[Any, ...] | None]) -> None:
        groups: dict[int, list[tuple[Any, ...]]] = {}
        for item in items:
            if item is not None:
                groups.setdefault(id(item[1]), []).append(item)
        for group in groups.values():
            model, stats = group[0][0], group[0][1]
            names = list(group[0][2])
            try:
                inputs = {k: np.concatenate([g[2][k] for g in group]) for k in names}
                outputs = [np.concatenate([g[3][i] for g in group]) for i in range(len(group[0][3]))]
            except ValueError:  # e.g. different symbolic sizes across requests: one at a time
                for g in group:
                    self._add(model, stats, g[2], g[3], [g[4]])
                continue
            self._add(model, stats, inputs, outputs, [g[4] for g in group])

    def _add(self, model: Any, stats: WindowStats, inputs: dict[str, np.ndarray], outputs: list[np.ndarray],
             metas: list[tuple[str, str] | None] | None = None) -> None:
        stats.sampled += int(next(iter(inputs.values())).shape[0]) if inputs else 1
        model.sketcher.add(stats, inputs, outputs)
        spec = model.sketcher.monitor
        if spec is not None and spec.output < len(outputs) and metas is not None:
            stats.confidence = observe(spec, outputs[spec.output], metas, stats, self.records_per_window)
        if self.raw_samples_per_window and len(stats.raw) < self.raw_samples_per_window:
            first = next(iter(inputs.values()))
            for i in range(min(first.shape[0], self.raw_samples_per_window - len(stats.raw))):
                stats.raw.append({k: v[i:i + 1].tolist() for k, v in inputs.items()})

    FOLD_AT = 20000  # latencies kept as floats before compaction (about 0.6 MB)

    def _window_timer(self) -> None:
        while not self._stop.is_set():
            due = self.window_start + self.window_s
            self._kick.wait(timeout=min(1.0, max(0.0, due - time.time())))
            self._kick.clear()
            if self._stop.is_set():
                return
            now = time.monotonic()
            if now - self._last_refill >= 1.0:
                self._last_refill = now
                self.sample_budget = self.max_samples_per_s
                if self.outcomes is not None:
                    try:
                        self.outcomes.store.flush()
                    except Exception:
                        log.exception("event=outcome-flush-failed")
            with self._lock:
                for t in list(self._tracked.values()):
                    st = t.model.stats
                    if st is not None and len(st.latencies_us) >= self.FOLD_AT:
                        st.fold()
            if time.time() >= self.window_start + self.window_s:
                try:
                    self.close_window()
                except Exception:
                    log.exception("event=window-close-failed")

    def set_config(self, window_s: float | None = None, sample_rate: float | None = None) -> None:
        if sample_rate is not None:
            self.sample_rate = float(sample_rate)
        if window_s is not None:
            self.window_s = float(window_s)
            self._kick.set()

    # -- window close -------------------------------------------------------------------------
    def drain(self, timeout: float = 2.0) -> None:
        """Wait until queued samples are processed (closing a window; a benchmark's quiet start)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.002)

    def close_window(self, end: float | None = None) -> list[dict[str, Any]]:
        """Close the current window now; returns the payloads handed to the sink."""
        with self._lock:
            end = time.time() if end is None else end
            start = self.window_start
            old: list[tuple[Tracked, WindowStats]] = []
            for key, t in list(self._tracked.items()):
                old.append((t, t.model.stats or WindowStats()))
                if t.extra.get("retiring"):
                    del self._tracked[key]
                else:
                    t.model.stats = WindowStats()
            self.window_start = end
            time.sleep(0.001)  # let a request that read the old stats just before the swap finish
            self.drain()
            resources = self.resources()
            payloads = [self._payload(t, st, start, end, resources) for t, st in old]
        for p in payloads:
            try:
                self.sink(p)
            except Exception:
                log.exception("event=telemetry-sink-failed")
        return payloads

    def _payload(self, t: Tracked, st: WindowStats, start: float, end: float,
                 resources: dict[str, Any]) -> dict[str, Any]:
        """The window's wire payload, built by agent.window_payload (the type the fleet reads)."""
        st.fold()
        m = t.model
        extra: dict[str, Any] = {}
        if st.samples_dropped:
            extra["samples_dropped"] = st.samples_dropped
        base = m.sketcher.baseline
        feats: list[tuple[str, FixedBinHistogram]] = []
        pred = None
        if base:
            hists = st.features or m.sketcher.new_features() or []
            feats = [(spec["name"], h) for spec, h in zip(base["features"], hists, strict=False)]
            pred = st.prediction if st.prediction is not None else m.sketcher.new_prediction()
        if t.role == "shadow":
            extra["shadow"] = {"compared": st.compared, "agreed": st.agreed,
                               "active_version": t.extra.get("active_version")}
        if st.raw:
            extra["raw_samples"] = st.raw
        if st.data_quality:  # raw-input schema violations per feature (agent/features.py)
            extra["data_quality"] = {k: dict(v) for k, v in sorted(st.data_quality.items())}
        window = build_window(
            fleet=self.fleet, device=self.device, device_class=self.device_class,
            model=ModelRef(m.installed.name, m.installed.version, t.role, m.installed.manifest_sha256),
            start=start, end=end, errors=st.errors, latency=st.folded, sampled=st.sampled, resources=resources,
            features=feats, prediction=pred, dropped_windows=int(self.dropped_windows()), extra=extra)
        p = window.to_wire()
        self._field_loop(p, st, m)
        return p

    def _field_loop(self, p: dict[str, Any], st: WindowStats, m: Any) -> None:
        """Confidence, slices, sampled prediction records and labelled outcomes (docs/telemetry.md)."""
        spec = m.sketcher.monitor
        if spec is None:
            return
        if spec.classification:
            p["confidence"] = (st.confidence or ConfidenceStats(spec.low_confidence)).to_dict()
        if st.slices:
            p["slices"] = slice_counts(st.slices, spec.min_slice_count)
        if st.records:
            p["prediction_records"] = st.records
        if self.outcomes is not None and p["model"]["role"] != "shadow":
            out = self.outcomes.take_window(int(m.installed.version))
            if out is not None:
                p["outcomes"] = out
