"""Shadow evaluation: the candidate runs on a sampled fraction of requests in a background
thread (its answers are never returned), recording agreement with the active model, latency
and errors into the candidate's telemetry. A bounded queue keeps the hot path non-blocking.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from agent.confidence import observe
from agent.telemetry import prediction_values

if TYPE_CHECKING:
    from agent.serving import LoadedModel, Predictor

_Offer = tuple["LoadedModel", dict[str, np.ndarray], list[np.ndarray]]  # active model, inputs, its outputs

log = logging.getLogger(__name__)


def agreement(active_out: np.ndarray, cand_out: np.ndarray, as_class: bool) -> tuple[int, int]:
    """(compared, agreed) per sample: same class, or values within 1% (numeric outputs)."""
    a = prediction_values(np.asarray(active_out), as_class)
    c = prediction_values(np.asarray(cand_out), as_class)
    if a.shape != c.shape:
        return int(a.shape[0]), 0
    same = a == c if as_class else np.isclose(a, c, rtol=1e-2, atol=1e-6)
    return int(a.shape[0]), int(np.sum(same))


class ShadowRunner:
    def __init__(self, predictor: Predictor, queue_size: int = 64) -> None:
        self.predictor = predictor
        self._queue: queue.Queue[_Offer | None] = queue.Queue(maxsize=queue_size)
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        self._thread.start()

    def offer(self, active: LoadedModel, inputs: dict[str, np.ndarray], outputs: list[np.ndarray]) -> None:
        try:
            self._queue.put_nowait((active, inputs, outputs))
        except queue.Full:
            self.dropped += 1

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def drain(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.002)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._compare(*item)
            except Exception:
                log.exception("event=shadow-failed")
            finally:
                self._queue.task_done()

    def _compare(self, active: LoadedModel, inputs: dict[str, np.ndarray], outputs: list[np.ndarray]) -> None:
        cand = self.predictor.candidate
        if cand is None or cand.mode != "shadow":
            return
        m = cand.model
        stats = m.stats
        t0 = time.perf_counter_ns()
        try:
            outs = m.runtime.run(inputs)
        except Exception as exc:
            if stats is not None:
                stats.error("runtime")
            log.info("event=shadow-error version=%s error=%s", m.version, exc)
            return
        if stats is None:
            return
        stats.latencies_us.append((time.perf_counter_ns() - t0) / 1000.0)
        base = (m.manifest.get("drift_baseline") or {}).get("prediction") or {}
        as_class = base.get("kind", "class") == "class"
        compared, agreed = agreement(outputs[0], outs[0], as_class)
        stats.compared += compared
        stats.agreed += agreed
        tel = self.predictor.telemetry
        if tel is not None:
            m.sketcher.add(stats, inputs, outs)
            stats.sampled += compared
            if m.monitor is not None and m.monitor.output < len(outs):  # the candidate's confidence
                stats.confidence = observe(m.monitor, outs[m.monitor.output], [None], stats, 0)
