"""Local explanation latency on the device (issue 15): Agent.explain (occlusion with the device's
own runtime: n_features + 1 inferences in one batched call) against a plain Agent.predict on the
same model and input. Models: the digits MLP (64 pixel features, the agent tests' model) and a
32-feature tabular MLP. Prints a table and writes benchmarks/out/explain_bench.json.

Usage: .venv/bin/python benchmarks/explain_bench.py [--n N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.bundle import build_bundle  # noqa: E402
from agent.config import AgentConfig, TelemetryConfig  # noqa: E402
from agent.daemon import Agent  # noqa: E402
from agent.keys import generate_keypair, load_private_key  # noqa: E402
from agent.sketches import build_drift_baseline  # noqa: E402
from benchmarks.agent_bench import mlp_onnx  # noqa: E402
from compiler.explain import explain_version  # noqa: E402


def _bundle(tmp: Path, key: Any, name: str, onnx_path: Path, x: np.ndarray) -> Path:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    run = lambda b: sess.run(None, {inp: b.astype(np.float32)})[0]  # noqa: E731
    preds = run(x).argmax(axis=1)
    n_out = int(run(x[:1]).shape[1])
    fields = {"model": {"name": name, "version": 1, "device_class": "x86-64-generic", "format": "onnx",
                        "precision": "fp32"},
              "entrypoint": "model.onnx",
              "inputs": [{"name": inp, "dtype": "float32", "shape": ["batch", int(x.shape[1])]}],
              "outputs": [{"name": sess.get_outputs()[0].name, "dtype": "float32", "shape": ["batch", n_out]}],
              "metrics": {}, "provenance": {},
              "drift_baseline": build_drift_baseline(x, preds, input_name=inp, n_classes=n_out),
              "explain": explain_version(run, x, None, None, "classification", input_name=inp)}
    out = tmp / f"{name}.bundle"
    build_bundle(out, {"model.onnx": onnx_path}, fields, key)
    return out


def _p50(fn: Any, n: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    from sklearn.datasets import load_digits

    digits = (load_digits().data / 16.0).astype(np.float32)
    tab = np.random.default_rng(0).normal(size=(500, 32)).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        priv, pub = generate_keypair(tmp, "build")
        key = load_private_key(priv)
        from tests.agent import models as agent_models  # the agent tests' trained digits MLP

        trained = agent_models.onnx_from_weights(agent_models.mlp_weights(agent_models.train_mlp()), tmp / "digits.onnx")
        models = {"digits MLP (64 features)": ("digits", trained, digits),
                  "tabular MLP (32 features)": ("tab32", mlp_onnx(tmp / "tab32.onnx", [32, 64, 64, 2]), tab)}
        for label, (name, path, x) in models.items():
            bundle = _bundle(tmp, key, name, path, x)
            cfg = AgentConfig(device_id=f"bench-{name}", state_dir=str(tmp / f"state-{name}"), build_keys=[str(pub)],
                              telemetry=TelemetryConfig(enabled=False))
            agent = Agent(cfg).start()
            try:
                agent.install(bundle)
                inp = agent.predictor.active.inputs[0].name
                one = {inp: x[:1]}
                ex = agent.explain(one)
                predict = _p50(lambda: agent.predict(one), args.n)  # noqa: B023
                explain = _p50(lambda: agent.explain(one), args.n)  # noqa: B023
                rows.append({"model": label, "features": ex["n_features"], "evaluations": ex["evaluations"],
                             "predict_p50_ms": round(predict, 4), "explain_p50_ms": round(explain, 4),
                             "ratio": round(explain / predict, 1)})
            finally:
                agent.stop()
    print(f"{'model':28} {'features':>8} {'inferences':>10} {'predict p50':>12} {'explain p50':>12} {'x':>6}")
    for r in rows:
        print(f"{r['model']:28} {r['features']:>8} {r['evaluations']:>10} {r['predict_p50_ms']:>9.3f} ms "
              f"{r['explain_p50_ms']:>9.3f} ms {r['ratio']:>6}")
    out = ROOT / "benchmarks" / "out"
    out.mkdir(exist_ok=True)
    (out / "explain_bench.json").write_text(json.dumps({"rows": rows, "n": args.n}, indent=2))


if __name__ == "__main__":
    main()
