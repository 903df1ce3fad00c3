"""Agent overhead benchmark: predict through the Python API and the local server (Unix socket)
against the raw runtime call (session.run) on the same model and input, with telemetry on and
off, side by side in one run. Prints a table and writes benchmarks/out/agent_bench.json.

Usage: .venv/bin/python benchmarks/agent_bench.py [--quick]

Targets: API overhead <= 5% at p50 on a ~1 ms model and <= 50 us on a tiny one; telemetry
costs <= 3% of throughput; the local server adds <= 150 us at p50 over the Python API.
Measurements are interleaved in rounds; latency percentiles are the median over rounds and
throughput is the best round (other processes sharing the CPU can only lower it), which damps
the noise of a shared machine.
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
from agent.config import AgentConfig, ServingConfig, TelemetryConfig  # noqa: E402
from agent.daemon import Agent  # noqa: E402
from agent.keys import generate_keypair, load_private_key  # noqa: E402
from agent.sketches import build_drift_baseline  # noqa: E402


def mlp_onnx(path: Path, dims: list[int], seed: int = 0) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        w = (rng.standard_normal((b, a)) / np.sqrt(a)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}")]
        out = "logits" if i == len(dims) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out if out == "logits" else out + "g"],
                                      transB=1))
        if out != "logits":
            nodes.append(helper.make_node("Relu", [out + "g"], [out]))
        prev = out
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dims[0]])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", dims[-1]])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def make_bundle(d: Path, name: str, dims: list[int], key_path: Path) -> Path:
    import onnxruntime as ort

    onnx_path = mlp_onnx(d / f"{name}.onnx", dims)
    x = np.random.default_rng(1).random((256, dims[0])).astype(np.float32)
    y = ort.InferenceSession(str(onnx_path)).run(None, {"x": x})[0]
    baseline = build_drift_baseline(x, y.argmax(1), input_name="x", max_features=16, n_classes=dims[-1])
    fields = {"model": {"name": name, "version": 1, "device_class": "x86-64-generic", "format": "onnx",
                        "precision": "fp32"}, "entrypoint": "model.onnx",
              "inputs": [{"name": "x", "shape": ["batch", dims[0]], "dtype": "float32"}],
              "outputs": [{"name": "logits", "shape": ["batch", dims[-1]], "dtype": "float32"}],
              "metrics": {}, "provenance": {}, "drift_baseline": baseline}
    out = d / f"{name}.bundle"
    build_bundle(out, {"model.onnx": onnx_path}, fields, load_private_key(key_path))
    return out


def timed(fn: Any, n: int) -> tuple[np.ndarray, float]:
    lat = np.empty(n)
    t_start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter_ns()
        fn()
        lat[i] = (time.perf_counter_ns() - t0) / 1000.0
    return lat, n / (time.perf_counter() - t_start)


_CLIENT = """
import json, sys, time
import numpy as np
from agent.local_server import LocalClient
sock, n, dim, echo = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "echo"
x = np.random.default_rng(2).random((1, dim)).astype(np.float32)
c = LocalClient(sock)
call = (lambda: c.call({"x": x})) if echo else (lambda: c.predict({"x": x}))
for _ in range(max(50, n // 10)):
    call()
lat = np.empty(n)
t = time.perf_counter()
for i in range(n):
    t0 = time.perf_counter_ns()
    call()
    lat[i] = (time.perf_counter_ns() - t0) / 1000.0
tput = n / (time.perf_counter() - t)
print(json.dumps([float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), tput]))
"""


def remote_client(sock: str, x: np.ndarray, n: int, echo: bool = False) -> tuple[float, float, float]:
    """An app in its own process calling the local server, as on a device."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", _CLIENT, sock, str(n), str(x.shape[1]), "echo" if echo else "-"],
                         cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=600)
    p50, p99, tput = json.loads(out.stdout.strip().splitlines()[-1])
    return p50, p99, tput


def echo_server(path: str) -> Any:
    """The floor: the same framing over the same kind of socket, answered without any work."""
    import socketserver
    import struct
    import threading

    class Echo(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            rfile = self.request.makefile("rb", buffering=1 << 16)
            while len(head := rfile.read(4)) == 4:
                body = rfile.read(struct.unpack("<I", head)[0])
                self.request.sendall(head + body)

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    srv = Server(path, Echo)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def bench_model(tmp: Path, bundle: Path, pub: Path, n: int, rounds: int, dims: list[int]) -> dict[str, Any]:
    sock = str(tmp / f"{bundle.stem}.sock")
    on = Agent(AgentConfig(device_id=f"bench-{bundle.stem}", state_dir=str(tmp / f"on-{bundle.stem}"),
                           trusted_keys=[str(pub)], telemetry=TelemetryConfig(window_s=3600, sample_rate=0.1),
                           serving=ServingConfig(unix_socket=sock))).start()
    off = Agent(AgentConfig(device_id=f"bench-off-{bundle.stem}", state_dir=str(tmp / f"off-{bundle.stem}"),
                            trusted_keys=[str(pub)], telemetry=TelemetryConfig(enabled=False))).start()
    on.install(bundle)
    off.install(bundle)
    session = on.predictor.active.runtime.session  # the same ORT session the agent uses
    x = np.random.default_rng(2).random((1, dims[0])).astype(np.float32)
    feeds = {"x": x}
    paths = {
        "raw session.run": lambda: session.run(None, feeds),
        "python API, telemetry off": lambda: off.predict(feeds),
        "python API, telemetry on": lambda: on.predict(feeds),
    }
    srv_key = "local server (unix socket, client process), telemetry on"
    echo_key = "floor: echo over the same socket framing (no work)"
    echo_sock = sock + ".echo"
    echo = echo_server(echo_sock)
    for fn in paths.values():  # warm up
        timed(fn, max(50, n // 10))
    per_round: dict[str, list[tuple[float, float, float]]] = {k: [] for k in [*paths, srv_key, echo_key]}
    for _ in range(rounds):
        for k, fn in paths.items():
            lat, tput = timed(fn, n)
            per_round[k].append((float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), tput))
        per_round[srv_key].append(remote_client(sock, x, n))
        per_round[echo_key].append(remote_client(echo_sock, x, n, echo=True))
    echo.shutdown()
    echo.server_close()
    on.stop()
    off.stop()
    res = {}
    for k, vals in per_round.items():
        res[k] = {"p50_us": statistics.median(v[0] for v in vals), "p99_us": statistics.median(v[1] for v in vals),
                  # best round: CPU steal from other processes only ever lowers throughput
                  "throughput_per_s": max(v[2] for v in vals)}
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = ap.parse_args()
    n, rounds = (300, 3) if args.quick else (700, 15)
    models = {"tiny (64-32-10 MLP)": [64, 32, 10], "~1 ms (512-2048-2048-10 MLP)": [512, 2048, 2048, 10]}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        _, pub = generate_keypair(tmp, "fleet")
        for label, dims in models.items():
            bundle = make_bundle(tmp, label.split()[0].replace("~", "m"), dims, tmp / "fleet.key")
            results[label] = bench_model(tmp, bundle, pub, n if dims[1] < 1000 else n // 4, rounds, dims)
    rows, checks = [], []
    for label, r in results.items():
        raw, off, on, srv = (r["raw session.run"], r["python API, telemetry off"], r["python API, telemetry on"],
                             r["local server (unix socket, client process), telemetry on"])
        for k, v in r.items():
            rows.append((label, k, v["p50_us"], v["p99_us"], v["throughput_per_s"]))
        api_over_us = off["p50_us"] - raw["p50_us"]
        api_over_pct = 100 * api_over_us / raw["p50_us"]
        tel_cost_pct = 100 * (1 - on["throughput_per_s"] / off["throughput_per_s"])
        srv_over_us = srv["p50_us"] - on["p50_us"]
        if label.startswith("tiny"):
            checks.append((label, "python API overhead at p50", f"{api_over_us:.1f} us", "<= 50 us", api_over_us <= 50))
        else:
            checks.append((label, "python API overhead at p50", f"{api_over_pct:.1f} %", "<= 5 %", api_over_pct <= 5))
        checks.append((label, "telemetry cost in throughput", f"{tel_cost_pct:.1f} %", "<= 3 %", tel_cost_pct <= 3))
        checks.append((label, "local server added at p50", f"{srv_over_us:.1f} us", "<= 150 us", srv_over_us <= 150))
        floor = r["floor: echo over the same socket framing (no work)"]["p50_us"]
        checks.append((label, "  of which IPC floor (echo p50)", f"{floor:.1f} us", "-", True))
    print(f"\n{'model':30} {'path':56} {'p50 us':>9} {'p99 us':>9} {'req/s':>10}")
    for label, k, p50, p99, tput in rows:
        print(f"{label:30} {k:56} {p50:9.1f} {p99:9.1f} {tput:10.0f}")
    print(f"\n{'model':30} {'check':32} {'measured':>10} {'target':>10}  ok")
    for label, what, measured, target, ok in checks:
        print(f"{label:30} {what:32} {measured:>10} {target:>10}  {'yes' if ok else 'NO'}")
    out = ROOT / "benchmarks" / "out" / "agent_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results, "checks": [
        {"model": m, "check": w, "measured": v, "target": t, "ok": ok} for m, w, v, t, ok in checks],
        "iterations": n, "rounds": rounds}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
