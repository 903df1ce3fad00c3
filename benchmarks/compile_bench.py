"""Compiler benchmark: every format x precision against FP32 ONNX Runtime, side by side, on this CPU.

Two models big enough for INT8 to win: a CNN (~300k parameters, 1x32x32 digits) and a transformer
encoder (d_model 256, 2 layers, 32 tokens of 32 features). Each artifact is built by the compiler's own passes
and evaluated in its own runtime. Latency is single-thread, batch 1, measured in interleaved
rounds so every artifact sees the same machine load. Prints a table (targets beside measured
values) and writes benchmarks/out/compile_bench.json.

Then the real third-party models (benchmarks/compile_real.py): all-MiniLM-L6-v2 and YOLOv8n, with
ORT FP32, ORT dynamic INT8 and OpenVINO+NNCF defaults as peers beside EdgeFleet's choice, and every
device class compiled with default budgets.

    .venv/bin/python benchmarks/compile_bench.py [--quick] [--real-only | --no-real]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

TARGET_SPEEDUP = 2.0
TARGET_SIZE_RATIO = 3.5
TARGET_MAX_DROP_POINTS = 1.0
CASES = {
    "onnx": ["fp32", "int8", "dynamic-int8", "fp16"],
    "openvino": ["fp32", "int8", "fp16"],
    "tflite": ["fp32", "int8", "mixed"],
}


def _data(size: int) -> dict[str, np.ndarray]:
    """Digits upsampled to size x size (nearest), [0, 1]; fixed split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    f = size // 8
    x = np.kron(x, np.ones((f, f), dtype=np.float32))
    idx = np.random.default_rng(0).permutation(len(x))
    x, y = x[idx], d.target[idx].astype(np.int64)
    return {"x_train": x[:1300], "y_train": y[:1300], "x_test": x[1300:], "y_test": y[1300:]}


def _cnn() -> Any:
    """~300k parameters; BatchNorm (folded at export) lets a few epochs train it."""
    from torch import nn

    def block(cin: int, cout: int) -> list[Any]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(1, 32), *block(32, 64), nn.MaxPool2d(2), *block(64, 128), *block(128, 128),
                         nn.MaxPool2d(2), *block(128, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))


class _Encoder:
    @staticmethod
    def build(d_model: int = 256, layers: int = 2, tokens: int = 16) -> Any:
        import torch
        from torch import nn

        class Encoder(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.proj = nn.Linear(tokens, d_model)
                self.pos = nn.Parameter(torch.zeros(1, tokens, d_model))
                layer = nn.TransformerEncoderLayer(d_model, 4, 4 * d_model, dropout=0.0, batch_first=True)
                self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
                self.head = nn.Linear(d_model, 10)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.head(self.encoder(self.proj(x) + self.pos).mean(dim=1))

        return Encoder()


def _train(model: Any, x: np.ndarray, y: np.ndarray, epochs: int, lr: float) -> Any:
    import torch

    torch.manual_seed(0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(yt))
        for i in range(0, len(yt), 64):
            idx = order[i:i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def _models(quick: bool) -> dict[str, tuple[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    import torch

    d32 = _data(32)
    epochs = 2 if quick else 8
    torch.manual_seed(0)
    cnn = _train(_cnn(), d32["x_train"][:, None], d32["y_train"], epochs, 3e-3)
    torch.manual_seed(0)
    enc = _train(_Encoder.build(tokens=32), d32["x_train"], d32["y_train"], epochs, 5e-4)
    return {"cnn": (cnn, d32["x_train"][:, None], d32["x_test"][:, None], d32["y_test"], d32["x_train"][:128, None]),
            "transformer": (enc, d32["x_train"], d32["x_test"], d32["y_test"], d32["x_train"][:128])}


def _interleaved_latency(runners: dict[str, Any], sample: dict[str, np.ndarray], rounds: int, per_round: int) -> dict[str, float]:
    """Median single-sample latency (ms), artifacts alternating round by round."""
    times: dict[str, list[float]] = {k: [] for k in runners}
    for r in runners.values():
        for _ in range(10):
            r.run(sample)
    for _ in range(rounds):
        for key, r in runners.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                r.run(sample)
                times[key].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}


def bench(quick: bool = False) -> dict[str, Any]:
    import torch

    from compiler.data import Dataset
    from compiler.evaluate import quality
    from compiler.export import export_torch
    from compiler.passes import PassContext, build_artifact
    from compiler.quantize_onnx import looks_like_transformer
    from compiler.runtimes import open_runner, predict

    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    for model_name, (model, _xtr, xte, yte, xcal) in _models(quick).items():
        params = int(sum(p.numel() for p in model.parameters()))
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            fp32 = work / "fp32.onnx"
            export_torch(model, {"input": xte[:2]}, fp32)
            ev = Dataset({"input": xte}, yte)
            ctx = PassContext(fp32, model, "bench", {"input": xte[:2]}, Dataset({"input": xcal}), ev,
                              looks_like_transformer(fp32), calibration_samples=128)
            with torch.no_grad():
                reference = model(torch.from_numpy(xte)).numpy()
            arts, runners, found = {}, {}, {}
            for fmt, precisions in CASES.items():
                for precision in precisions:
                    key = f"{fmt}/{precision}"
                    try:
                        art = build_artifact(fmt, precision, ctx, work / fmt / precision)
                    except Exception as exc:  # a converter gap is a result, not a crash
                        found[key] = {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
                        continue
                    runner = open_runner(fmt, art.entry_path, threads=1)
                    q = quality("classification", predict(runner, ev.inputs), reference, yte, None)
                    arts[key], runners[key] = art, runner
                    found[key] = {"accuracy": q.metric, "reference_accuracy": q.reference_metric,
                                  "agreement": q.agreement, "size_bytes": art.size_bytes}
            lat = _interleaved_latency(runners, {"input": xte[:1]}, rounds=3 if quick else 10,
                                       per_round=20 if quick else 60)
            base_size, base_lat = found["onnx/fp32"]["size_bytes"], lat["onnx/fp32"]
            for key, res in found.items():
                fmt, precision = key.split("/")
                row: dict[str, Any] = {"model": model_name, "params": params, "format": fmt, "precision": precision,
                                       **res}
                if "error" not in res:
                    row["latency_ms"] = round(lat[key], 4)
                    row["speedup_vs_fp32_onnx"] = round(base_lat / lat[key], 3)
                    row["size_ratio_vs_fp32_onnx"] = round(base_size / res["size_bytes"], 3)
                    row["accuracy_drop_points"] = round(100 * (res["reference_accuracy"] - res["accuracy"]), 3)
                    if precision in ("int8", "dynamic-int8"):
                        row["targets"] = {
                            "speedup>=2x": row["speedup_vs_fp32_onnx"] >= TARGET_SPEEDUP,
                            "smaller>=3.5x": row["size_ratio_vs_fp32_onnx"] >= TARGET_SIZE_RATIO,
                            "drop<=1pt": row["accuracy_drop_points"] <= TARGET_MAX_DROP_POINTS}
                rows.append(row)
    from compiler.provenance import tool_versions

    return {"schema": "edgefleet.compile-bench/v1", "machine": {"cpu": _cpu_name(), "python": platform.python_version(),
            "threads": 1, "flags": _flags()}, "tools": tool_versions(),
            "targets": {"speedup": TARGET_SPEEDUP, "size_ratio": TARGET_SIZE_RATIO,
                        "max_drop_points": TARGET_MAX_DROP_POINTS}, "rows": rows}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _flags() -> list[str]:
    from agent.device_classes import cpu_flags

    return sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16"})


def print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"compile benchmark ({doc['machine']['cpu']}, 1 thread, batch 1; baseline FP32 ONNX Runtime)")
    for col in ("model", "format", "precision", "accuracy", "drop pts (<=1)", "size KB", "smaller (>=3.5x)",
                "p50 ms", "faster (>=2x)", "targets"):
        table.add_column(col)

    def mark(ok: bool | None) -> str:
        return "" if ok is None else (" [green]ok[/green]" if ok else " [red]miss[/red]")

    for r in doc["rows"]:
        if "error" in r:
            table.add_row(r["model"], r["format"], r["precision"], "-", "-", "-", "-", "-", "-", f"[red]{r['error']}[/red]")
            continue
        t = r.get("targets", {})
        table.add_row(r["model"], r["format"], r["precision"], f"{r['accuracy']:.4f}",
                      f"{r['accuracy_drop_points']:.2f}{mark(t.get('drop<=1pt'))}", f"{r['size_bytes'] / 1024:.0f}",
                      f"{r['size_ratio_vs_fp32_onnx']:.2f}x{mark(t.get('smaller>=3.5x'))}", f"{r['latency_ms']:.3f}",
                      f"{r['speedup_vs_fp32_onnx']:.2f}x{mark(t.get('speedup>=2x'))}",
                      ("all met" if t and all(t.values()) else ("missed" if t else "")))
    Console(width=200).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and iterations (smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "compile_bench.json")
    parser.add_argument("--real-only", action="store_true", help="only the real third-party models")
    parser.add_argument("--no-real", action="store_true", help="skip the real third-party models")
    args = parser.parse_args()
    doc = {"schema": "edgefleet.compile-bench/v1", "machine": {"cpu": _cpu_name(), "flags": _flags()}, "rows": []}
    if not args.real_only:
        doc = bench(args.quick)
    if not args.no_real:
        from compile_real import bench_real

        doc["real"] = bench_real(args.quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    if doc["rows"]:
        print_table(doc)
    if "real" in doc:
        from compile_real import print_real

        print(f"machine: {doc['machine']['cpu']} ({', '.join(doc['machine']['flags'])})")
        print_real(doc["real"])
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
