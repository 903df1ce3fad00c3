"""Raw-input contract cost: batch-1 latency of a bundle fed raw features vs the same model fed tensors.

A tabular model (breast cancer data, 4 numeric features + a derived categorical column) behind a
scikit-learn pipeline (median imputer + StandardScaler + OneHotEncoder) is compiled with the
pipeline in the bundle (FP32, one device class), installed in a real in-process agent, and timed
through `Agent.predict` in interleaved rounds: (a) tensor input by the model's input name (model
only), (b) one raw row as a dict of named features (validation + preprocess graph + model).
Prints a table and writes benchmarks/out/parity_bench.json.

    .venv/bin/python benchmarks/parity_bench.py [--iterations 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "compiler"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=2000)
    args = ap.parse_args()
    import joblib
    import pandas as pd
    import torch
    from test_raw_input_parity import _fit_pipeline, _tabular, _train_mlp, _write_csv

    from agent.config import AgentConfig
    from agent.daemon import Agent
    from agent.keys import generate_keypair
    from compiler.config import CompileConfig
    from compiler.pipeline import compile_model

    torch.set_num_threads(1)
    d = _tabular()
    n = d["n_train"]
    train = pd.DataFrame({k: v[:n] for k, v in d["cols"].items()})
    pipe = _fit_pipeline(train)
    model = _train_mlp(pipe.transform(train), d["y"][:n])
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        joblib.dump(pipe, tmp / "pipeline.joblib")
        evc = {k: v[n:] for k, v in d["cols"].items()}
        _write_csv(tmp / "eval.csv", evc, d["y"][n:])
        key, pub = generate_keypair(tmp / "keys", "build")
        (r,) = compile_model(CompileConfig(torch=model, sklearn_pipeline=str(tmp / "pipeline.joblib"),
                                           raw_eval=str(tmp / "eval.csv"), signing_key=key, out=tmp / "out",
                                           progress=False, precision="fp32", latency_iterations=5, name="tab"))
        assert r.passed, r.failed_gates
        a = Agent(AgentConfig(device_id="bench", state_dir=str(tmp / "agent"), build_keys=[str(pub)],
                              device_class="x86-64-generic")).start()
        try:
            a.install(r.bundle_path, allow_new_name=True)
            m = a.predictor.active.manifest
            in_name = m["inputs"][0]["name"]
            x = pipe.transform(pd.DataFrame(evc)).astype(np.float32)
            row = {k: (float(v[0]) if k != "clinic" else str(v[0])) for k, v in evc.items()}
            row = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            cases = {"model only (tensor input)": lambda: a.predict({in_name: x[:1]}),
                     "raw row (schema check + preprocess graph + model)": lambda: a.predict(row)}
            times: dict[str, list[float]] = {k: [] for k in cases}
            for _ in range(50):
                for fn in cases.values():
                    fn()
            for _ in range(args.iterations):
                for name, fn in cases.items():
                    t0 = time.perf_counter()
                    fn()
                    times[name].append((time.perf_counter() - t0) * 1e6)
        finally:
            a.stop()
    out = {name: {"p50_us": float(np.percentile(t, 50)), "p99_us": float(np.percentile(t, 99))}
           for name, t in times.items()}
    print(f"{'case':52} {'p50 us':>8} {'p99 us':>8}")
    for name, v in out.items():
        print(f"{name:52} {v['p50_us']:8.1f} {v['p99_us']:8.1f}")
    dest = ROOT / "benchmarks" / "out" / "parity_bench.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({"iterations": args.iterations, "results": out,
                                "parity": m["preprocess"]["parity"]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
