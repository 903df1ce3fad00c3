"""Field-loop costs (issue 14): what request ids, outcome records and confidence cost the agent on
the ~1 ms model, how big telemetry windows grow, and how fast the fleet joins labels.

Usage: .venv/bin/python benchmarks/field_loop_bench.py [--n N] [--rounds R] [--join N_LABELS]
       (--join needs DATABASE_URL=postgresql+psycopg://...; 0 skips it)

Agent: the Python API on the same bundle in one process, interleaved rounds, best-round
throughput (CPU steal only lowers it): (a) telemetry on, outcomes off, no confidence (the agent
before issue 14); (b) request ids + outcome store + confidence. Target: (b) costs <= 1%.
Join: N labels posted through fleet.analytics.join.post_labels against N prediction records.
Target: 1,000,000 labels <= 10 s on PostgreSQL. Writes benchmarks/out/field_loop_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from agent_bench import MODELS, make_bundle, timed  # noqa: E402

from agent.config import AgentConfig, TelemetryConfig  # noqa: E402
from agent.daemon import Agent  # noqa: E402
from agent.keys import generate_keypair  # noqa: E402


def agent_cost(n: int, rounds: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="fieldloop-"))
    priv, pub = generate_keypair(tmp, "build")
    dims = MODELS["1ms"][1]
    bundle = make_bundle(tmp, "ms1", dims, priv)
    before = Agent(AgentConfig(device_id="b-before", state_dir=str(tmp / "before"), build_keys=[str(pub)],
                               telemetry=TelemetryConfig(window_s=3600, sample_rate=0.1, outcomes=False))).start()
    after = Agent(AgentConfig(device_id="b-after", state_dir=str(tmp / "after"), build_keys=[str(pub)],
                              telemetry=TelemetryConfig(window_s=3600, sample_rate=0.1))).start()
    before.install(bundle)
    after.install(bundle)
    m = before.predictor.active   # "before": no confidence either
    m.monitor = m.sketcher.monitor = None
    x = {"x": np.random.default_rng(2).random((1, dims[0])).astype(np.float32)}
    paths = {"before (no ids/outcomes/confidence)": lambda: before.predict(x),
             "after (ids + outcomes + confidence)": lambda: after.predict(x)}
    for fn in paths.values():
        timed(fn, max(50, n // 10))
    per: dict[str, list[tuple[float, float]]] = {k: [] for k in paths}
    for _ in range(rounds):
        for k, fn in paths.items():
            before.telemetry.drain(10.0)
            after.telemetry.drain(10.0)
            after.outcomes.store.flush()
            lat, tput = timed(fn, n)
            per[k].append((float(np.percentile(lat, 50)), tput))
    sizes = {}
    for k, a in (("before", before), ("after", after)):
        p = a.flush_telemetry()[0]
        sizes[k] = len(json.dumps(p, separators=(",", ":")))
    before.stop()
    after.stop()
    res = {k: {"p50_us": float(np.median([v[0] for v in vals])), "throughput_per_s": max(v[1] for v in vals)}
           for k, vals in per.items()}
    b, a = res["before (no ids/outcomes/confidence)"], res["after (ids + outcomes + confidence)"]
    res["throughput_cost_percent"] = round(100 * (1 - a["throughput_per_s"] / b["throughput_per_s"]), 2)
    res["telemetry_bytes"] = sizes
    return res


def join_cost(n_labels: int) -> dict[str, Any]:
    from sqlmodel import Session

    from fleet.analytics.join import _upsert, post_labels
    from fleet.db import init_db, make_engine
    from fleet.models import PredictionRecord, TelemetryWindow

    engine = make_engine(os.environ["DATABASE_URL"])
    init_db(engine)
    rng = np.random.default_rng(0)
    ids = [f"bench-{i:08x}" for i in range(n_labels)]
    with Session(engine) as db:
        w = TelemetryWindow(device_id="bench", seq=int(time.time() * 1000), window_start=0.0, window_end=1.0,
                            model_name="bench", model_version=1, payload={})
        db.add(w)
        db.commit()
        rows = [{"request_id": rid, "window_id": int(w.id or 0) + 10**12, "device_id": "bench", "model_name": "bench",
                 "model_version": 1, "device_class": "", "cohort": "", "predicted": float(rng.integers(10)),
                 "confidence": 0.9, "slice": "_all", "at": 1.0} for rid in ids]
        _upsert(db, PredictionRecord, rows, ["request_id"], ["window_id"])
        db.commit()
        labels = [(rid, float(rng.integers(10))) for rid in ids]
        t0 = time.perf_counter()
        out = {"accepted": 0, "matched": 0}
        for i in range(0, n_labels, 200_000):   # the API's per-call limit
            r = post_labels(db, labels[i:i + 200_000])
            out = {k: out[k] + r[k] for k in out}
        post_s = time.perf_counter() - t0
        from fleet.analytics.join import joined_quality

        t1 = time.perf_counter()
        q = joined_quality(db, "bench", 1, n_classes=10)
        query_s = time.perf_counter() - t1
    engine.dispose()
    return {"labels": n_labels, "post_s": round(post_s, 2), "join_query_s": round(query_s, 2), **out,
            "labelled": q.labelled}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--join", type=int, default=0)
    args = ap.parse_args()
    res: dict[str, Any] = {"agent": agent_cost(args.n, args.rounds)}
    if args.join:
        res["join"] = join_cost(args.join)
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "field_loop_bench.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
