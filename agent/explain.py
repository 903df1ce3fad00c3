"""Local explanations on the device: per-feature occlusion attributions with the device's own runtime.

Why occlusion: it needs nothing but the runtime that serves (no gradients, works for ONNX, OpenVINO
and TFLite alike), it costs exactly n_features + 1 inferences (one batched call when the model takes
a dynamic batch) and it answers the question an operator asks: "how much did the predicted score
move when this feature was set to its typical value?". The typical value is the per-feature median
of the build's eval set, shipped in the manifest (`explain.reference`, compiler/explain.py); bundles
built before that fall back to the drift baseline's histogram medians (2-D inputs) or zero.

An explanation never contains the raw input, only attributions, so it may travel to the fleet
(the signed `explain` command) unless raw sampling is enabled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.spec_check import InputError, check_inputs

if TYPE_CHECKING:
    from agent.config import TelemetryConfig
    from agent.interfaces import Reporter
    from agent.serving import LoadedModel

MAX_ELEMENTS = 256  # per-sample tensors up to this size are explained per element, larger ones per channel
MAX_FEATURES = 1024  # the occlusion budget: never more inferences than this per explained row
MAX_ROWS = 16


def feature_groups(sample_shape: tuple[int, ...]) -> tuple[str, np.ndarray]:
    """(kind, index map): each element of one flattened sample -> its feature index (shared with
    the compiler so build-time importance and device attributions name the same features)."""
    size = int(np.prod(sample_shape)) if sample_shape else 1
    if len(sample_shape) <= 1 or size <= MAX_ELEMENTS:
        return "element", np.arange(size)
    per = size // sample_shape[0]
    return "channel", np.repeat(np.arange(sample_shape[0]), per)


def _layout(manifest: Mapping[str, Any], sample_shape: tuple[int, ...]) -> tuple[str, np.ndarray]:
    """feature_groups, or the build's own column -> feature map (`explain.groups`: a raw-input
    bundle's one-hot columns form one raw feature, occluded together)."""
    kind, groups = feature_groups(sample_shape)
    mapped = (manifest.get("explain") or {}).get("groups")
    if isinstance(mapped, list) and len(mapped) == groups.size and all(isinstance(g, int) for g in mapped):
        return "raw", np.asarray(mapped, dtype=np.int64)
    return kind, groups


def _baseline_medians(manifest: Mapping[str, Any], groups: np.ndarray) -> tuple[np.ndarray, str]:
    """Reference values per element (explain.reference is per feature, or per column on raw bundles)."""
    n_feat = int(groups.max()) + 1
    ref = (manifest.get("explain") or {}).get("reference")
    if isinstance(ref, list) and len(ref) in (n_feat, groups.size):
        r = np.asarray(ref, dtype=np.float64)
        return (r if len(ref) == groups.size and "groups" in manifest["explain"] else r[groups]), "explain.reference"
    base = manifest.get("drift_baseline") or {}
    ext = base.get("extractor") or {}
    out = np.zeros(n_feat)
    if not ext.get("reduce_axes") and base.get("features"):
        idx = ext.get("indices") or list(range(len(base["features"])))
        for i, feat in zip(idx, base["features"], strict=False):
            edges = feat.get("edges") or []
            if 0 <= int(i) < n_feat and edges:
                out[int(i)] = float(edges[len(edges) // 2])  # quantile edges: the middle one is ~ the median
        return out[groups], "drift_baseline"
    return out[groups], "zeros"


def _names(manifest: Mapping[str, Any], n_feat: int) -> list[str]:
    names = (manifest.get("explain") or {}).get("features")
    if isinstance(names, list) and len(names) == n_feat:
        return [str(n) for n in names]
    return [f"f{i}" for i in range(n_feat)]


def _score_index(out: np.ndarray) -> tuple[str, np.ndarray]:
    flat = out.reshape(len(out), -1)
    if flat.shape[1] > 1:
        return "class", flat.argmax(axis=1)
    return "value", np.zeros(len(flat), dtype=np.int64)


def explain_model(model: LoadedModel, inputs: Mapping[str, Any] | np.ndarray, top_k: int | None = None
                  ) -> dict[str, Any]:
    """Occlusion attributions for each row of `inputs` (single-input models; at most MAX_ROWS rows).

    Raises InputError for a bad input or a model this method cannot explain."""
    t0 = time.perf_counter()
    raw = getattr(model, "features", None)  # the bundle's raw-input contract (agent/features.py)
    if raw is not None and raw.accepts(inputs):
        inputs, _ = raw.transform(inputs)  # attributions are over the model's input columns
    x = check_inputs(inputs, model.inputs)
    if len(x) != 1:
        raise InputError("explanations need a model with exactly one input tensor")
    name, arr = next(iter(x.items()))
    if arr.ndim < 1 or len(arr) > MAX_ROWS:
        raise InputError(f"explain at most {MAX_ROWS} rows per request (got {len(arr) if arr.ndim else 0})")
    kind, groups = _layout(model.manifest, tuple(arr.shape[1:]))
    n_feat = int(groups.max()) + 1
    if n_feat > MAX_FEATURES:
        raise InputError(f"{n_feat} features exceed the occlusion budget of {MAX_FEATURES}")
    ref, ref_source = _baseline_medians(model.manifest, groups)
    names = _names(model.manifest, n_feat)
    fixed_batch = next((s.shape[0] for s in model.inputs if s.name == name and s.shape
                        and isinstance(s.shape[0], int) and s.shape[0] > 0), None)
    rows, evaluations = [], 0
    for r in range(len(arr)):
        row = arr[r:r + 1]
        flat = row.reshape(1, -1)
        variants = np.repeat(flat, n_feat + 1, axis=0)
        for f in range(n_feat):
            variants[f + 1, groups == f] = ref[groups == f]
        variants = variants.reshape((n_feat + 1, *row.shape[1:])).astype(row.dtype, copy=False)
        if fixed_batch == 1:
            out = np.concatenate([np.asarray(model.run({name: variants[i:i + 1]})[0]) for i in range(n_feat + 1)])
        else:
            out = np.asarray(model.run({name: variants})[0])
        evaluations += n_feat + 1
        out = out.reshape(n_feat + 1, -1).astype(np.float64)
        score_kind, target = _score_index(out[:1])
        t = int(target[0])
        attr = out[0, t] - out[1:, t]
        order = np.argsort(-np.abs(attr), kind="stable")[: top_k or n_feat]
        rows.append({"prediction": t if score_kind == "class" else None, "score": round(float(out[0, t]), 6),
                     "attributions": [{"feature": names[i], "attribution": round(float(attr[i]), 6)}
                                      for i in order]})
    return {"model": model.installed.name, "version": model.version, "method": "occlusion",
            "reference": ref_source, "feature_kind": kind, "n_features": n_feat, "evaluations": evaluations,
            "rows": rows, "latency_ms": round((time.perf_counter() - t0) * 1000.0, 3)}


def http_explain(explain: Any, body: Any, error_kind: Any) -> tuple[int, str, list[bytes]]:
    """POST /v1/explain {"inputs": ..., "top_k": 5}: the attributions as JSON (or the same error
    document /v1/predict answers with)."""
    import json

    try:
        try:
            doc = json.loads(body if isinstance(body, bytes) else bytes(body))
        except (ValueError, RecursionError) as exc:
            raise InputError(f"body is not JSON: {exc}") from None
        inputs = doc.get("inputs") if isinstance(doc, dict) else doc
        if not isinstance(inputs, (dict, list)):
            raise InputError("JSON body must be {\"inputs\": {name: array}, \"top_k\": n} or an array")
        top_k = doc.get("top_k") if isinstance(doc, dict) else None
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise InputError("top_k must be a positive integer")
        return 200, "application/json", [json.dumps(explain(inputs, top_k)).encode()]
    except Exception as exc:
        code, kind = error_kind(exc)
        return code, "application/json", [json.dumps({"error": {"kind": kind, "message": str(exc)}}).encode()]


# -- fleet-requested explanations (the signed `explain` command) ------------------------------

MAX_COUNT = 100
MAX_RAW_BYTES = 16 * 1024


class ExplainRequests:
    """After a signed `explain` command, explain the next `count` requests that pass the
    `sample_rate` draw, off the request path (one worker thread, a bounded queue: a busy device
    drops explanations, never requests). Each result is an `explanation` event carrying the
    attributions only; the raw input rides along only where raw sampling is enabled."""

    def __init__(self, explain: Callable[[Any, int | None], dict[str, Any]], report: Reporter,
                 telemetry: TelemetryConfig) -> None:
        """`explain` is Agent.explain; events go to the Reporter; the `[telemetry]` section says
        whether raw inputs may leave the device (read at each explanation: it may change)."""
        import queue
        import random
        import threading

        self._explain, self._emit, self._telemetry = explain, report.emit_event, telemetry
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, int, Any] | None] = queue.Queue(maxsize=MAX_ROWS)
        self._rand = random.random
        self._thread: threading.Thread | None = None
        self.command_id: str | None = None
        self.remaining = 0
        self.count = 0
        self.sample_rate = 1.0
        self.top_k: int | None = None
        self.dropped = 0

    def arm(self, command_id: str, count: int, sample_rate: float = 1.0, top_k: int | None = None) -> None:
        import threading

        with self._lock:
            self.command_id, self.count, self.remaining = command_id, count, count
            self.sample_rate, self.top_k = sample_rate, top_k
            if self._thread is None:
                self._thread = threading.Thread(target=self._worker, name="explain", daemon=True)
                self._thread.start()

    def offer(self, inputs: Any) -> None:
        """Called after a successful predict; cheap unless armed."""
        if self.remaining <= 0 or self._rand() >= self.sample_rate:
            return
        with self._lock:
            if self.remaining <= 0 or self.command_id is None:
                return
            self.remaining -= 1
            index = self.count - self.remaining
            cid = self.command_id
        if isinstance(inputs, np.ndarray):
            copied: Any = inputs.copy()
        elif isinstance(inputs, Mapping) and all(isinstance(v, np.ndarray) for v in inputs.values()):
            copied = {k: v.copy() for k, v in inputs.items()}
        else:  # nested lists, raw rows by feature name: the caller may reuse them after predict returns
            import copy

            copied = copy.deepcopy(inputs)
        try:
            self._queue.put_nowait((cid, index, copied))
        except Exception:  # queue.Full: the device is busier than its explanation budget
            self.dropped += 1

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)

    def _worker(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            cid, index, inputs = item
            try:
                result = self._explain(inputs, self.top_k)
            except Exception as exc:  # the model changed or the input no longer fits: say so, go on
                self._emit("explanation-failed", command_id=cid, reason=str(exc)[:300], details={"index": index})
                continue
            details: dict[str, Any] = {"index": index, "of": self.count, "explanation": result}
            if self._telemetry.raw_samples:
                raw = {k: np.asarray(v).tolist() if isinstance(v, np.ndarray) else v for k, v in inputs.items()} \
                    if isinstance(inputs, Mapping) else np.asarray(inputs).tolist() \
                    if isinstance(inputs, np.ndarray) else inputs
                import json

                if len(json.dumps(raw)) <= MAX_RAW_BYTES:
                    details["inputs"] = raw
            self._emit("explanation", command_id=cid, reason=None, details=details)


def arm_command(requests: ExplainRequests | None, payload: Mapping[str, Any]) -> None:
    """Validate a signed `explain` command {"count", "sample_rate"?, "top_k"?} and arm `requests`."""
    from agent.lifecycle import InstallError

    count, rate, top_k = payload.get("count"), payload.get("sample_rate", 1.0), payload.get("top_k")
    if requests is None:
        raise InstallError("malformed", "this agent does not take explain commands")
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_COUNT:
        raise InstallError("malformed", f"explain 'count' must be an integer in [1, {MAX_COUNT}]")
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 < rate <= 1:
        raise InstallError("malformed", "explain 'sample_rate' must be in (0, 1]")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise InstallError("malformed", "explain 'top_k' must be a positive integer")
    requests.arm(str(payload["id"]), count, float(rate), top_k)
