"""Where a detector's batch-1 time goes: ORT FP32 (the baseline) against the INT8 OpenVINO IR, layer by layer.

Issue 13's detector target is INT8 >= 2.5x ORT FP32. This profile says what bounds it on the CPU at
hand: per conv block (convolution + its SiLU) the time of each, grouped by output resolution, the
rest (concat/split/resize, the float box-decode head, reorders), and two ceilings:
  - measured: sum of ORT per-node times over the sum of OpenVINO per-layer times;
  - convs only: as if everything but the INT8 conv blocks cost nothing.
Plus a two-layer conv microbenchmark (ORT FP32 vs OpenVINO INT8) per channel width, which gives the
hardware's INT8:FP32 ratio for wide layers and shows how it shrinks for narrow ones.

Run alone: python benchmarks/detector_profile.py MODEL.xml   (compile_real.py calls profile()).
"""

from __future__ import annotations

import collections
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BLOCK = re.compile(r"^(.*?)/(?:conv|act)/|^(.*?)/Conv")


def _block(name: str) -> str | None:
    m = BLOCK.match(name)
    return (m.group(1) or m.group(2)) if m else None


def _ort_nodes(onnx_path: Path, x: dict[str, np.ndarray], n: int, work: Path) -> dict[str, float]:
    """ORT FP32 (its defaults, one thread) per-node ms from its own profiler, by node name."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.enable_profiling = True
    so.profile_file_prefix = str(work / "ort")
    s = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    for _ in range(n):
        s.run(None, x)
    events = json.loads(Path(s.end_profiling()).read_text())
    acc: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            acc[e["name"].removesuffix("_kernel_time")] += e["dur"] / 1e3 / n
    return acc


def _ov_nodes(xml: Path, x: dict[str, np.ndarray], n: int) -> tuple[dict[str, float], dict[str, str], dict[str, int]]:
    """OpenVINO per-layer ms (PERF_COUNT) of the IR compiled for x's shape as the agent serves it,
    each layer's exec type, and each convolution's MACs."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(xml))
    model.reshape({k: v.shape for k, v in x.items()})
    macs = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Convolution":
            w, o = op.input_value(1).get_partial_shape().to_shape(), op.output(0).get_partial_shape().to_shape()
            macs[op.get_friendly_name()] = int(np.prod(list(w))) * int(np.prod(list(o)[2:]))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                                                 "INFERENCE_NUM_THREADS": 1, "PERF_COUNT": True})
    req = compiled.create_infer_request()
    for _ in range(5):
        req.infer(x)
    acc: dict[str, float] = collections.defaultdict(float)
    kind: dict[str, str] = {}
    for _ in range(n):
        req.infer(x)
        for p in req.get_profiling_info():
            if p.status.name == "EXECUTED":
                acc[p.node_name] += p.real_time.total_seconds() * 1e3 / n
                kind[p.node_name] = f"{p.node_type} {p.exec_type}"
    return acc, kind, macs


def _groups(ort_ms: dict[str, float], ov_ms: dict[str, float], kind: dict[str, str], macs: dict[str, int],
            hw: dict[str, str]) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = collections.defaultdict(lambda: {"ort_ms": 0.0, "int8_ms": 0.0, "mmac": 0.0})
    conv_blocks = {_block(n) for n in macs}
    for name, ms in ort_ms.items():
        b = _block(name)
        rows[hw.get(b, "rest") if b in conv_blocks else "rest"]["ort_ms"] += ms
    for name, ms in ov_ms.items():
        b = _block(name)
        conv = kind[name].startswith("Convolution") and name in macs
        key = hw.get(b, "rest") if conv else "rest: " + ("int8" if "_I8" in kind[name] else "float / other")
        rows[key]["int8_ms"] += ms
        if conv:
            rows[key]["mmac"] += macs[name] / 1e6
    def order(k: str) -> tuple[int, str]:
        return (-int(k.split(" at ")[1].split("x")[0]), k) if k.startswith("convs at") else (1, k)

    return [{"group": k, **{f: round(v, 3) for f, v in rows[k].items()}} for k in sorted(rows, key=order)]


def _walls(onnx_path: Path, xml: Path, x: dict[str, np.ndarray], rounds: int) -> dict[str, float]:
    """Median wall ms of ORT FP32 (defaults, one thread) and the IR as the agent serves it, interleaved."""
    from agent.runtimes.base import RuntimeOptions, load_runtime
    from agent.runtimes.config import runtime_config

    ref = load_runtime("onnx", onnx_path, RuntimeOptions(threads=1))
    int8 = load_runtime("openvino", xml, RuntimeOptions(threads=1),
                        {"runtime_config": runtime_config("openvino", threads=1)})
    return _interleave({"ort": lambda: ref.run(x), "int8": lambda: int8.run(x)}, rounds)


def profile(onnx_path: Path, xml: Path, x: dict[str, np.ndarray], n: int = 30, rounds: int = 8) -> dict[str, Any]:
    """The per-group table and ceilings (see the module docstring) for one input shape. The profilers
    add their own overhead, so each side's per-layer shares are scaled to its wall time, measured
    side by side without profiling."""
    wall = _walls(onnx_path, xml, x, rounds)
    with tempfile.TemporaryDirectory() as tmp:
        ort_ms = _ort_nodes(onnx_path, x, n, Path(tmp))
    ov_ms, kind, macs = _ov_nodes(xml, x, n)
    ort_ms = _scaled(ort_ms, wall["ort"])
    ov_ms = _scaled(ov_ms, wall["int8"])
    rows = _groups(ort_ms, ov_ms, kind, macs, _resolutions(xml, x, macs))
    conv = sum(ms for name, ms in ov_ms.items() if name in macs and kind[name].startswith("Convolution"))
    ort_conv = sum(r["ort_ms"] for r in rows if r["group"].startswith("convs"))
    total_mmac = sum(macs.values()) / 1e6
    ceilings = {"measured": wall["ort"] / wall["int8"], "convs_only": wall["ort"] / conv}
    return {"shape": {k: list(v.shape) for k, v in x.items()}, "ort_fp32_ms": round(wall["ort"], 3),
            "int8_ms": round(wall["int8"], 3), "int8_conv_ms": round(conv, 3), "ort_conv_ms": round(ort_conv, 3),
            "conv_mmac": round(total_mmac, 1), "ort_fp32_gmac_s": round(total_mmac / wall["ort"], 1),
            "int8_conv_gmac_s": round(total_mmac / conv, 1), "groups": rows,
            "ceilings": {k: round(v, 2) for k, v in ceilings.items()}}


def _scaled(ms: dict[str, float], wall: float) -> dict[str, float]:
    total = sum(ms.values())
    return {k: v * wall / total for k, v in ms.items()}


def _resolutions(xml: Path, x: dict[str, np.ndarray], macs: dict[str, int]) -> dict[str, str]:
    """Conv block -> 'HxW, C in a..b' group label from the static model's shapes."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    model.reshape({k: v.shape for k, v in x.items()})
    out = {}
    for op in model.get_ordered_ops():
        if op.get_friendly_name() in macs:
            o = list(op.output(0).get_partial_shape().to_shape())
            out[_block(op.get_friendly_name())] = f"convs at {o[2]}x{o[3]}"
    return out


def conv_micro(widths: tuple[tuple[int, int], ...] = ((16, 160), (32, 80), (64, 40), (256, 40)),
               rounds: int = 4) -> list[dict[str, Any]]:
    """Two 3x3 convs of C->C channels at HxW: ORT FP32 vs OpenVINO INT8 (NNCF), one thread, interleaved."""
    import nncf
    import onnx
    import onnxruntime as ort
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for c, hw in widths:
            w = numpy_helper.from_array((rng.standard_normal((c, c, 3, 3)) * 0.05).astype(np.float32), "w")
            nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 4), helper.make_node("Relu", ["y"], ["z"]),
                     helper.make_node("Conv", ["z", "w"], ["out"], pads=[1] * 4)]
            io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, c, hw, hw]) for n in ("x", "out")]
            path = Path(tmp) / f"conv{c}.onnx"
            onnx.save(helper.make_model(helper.make_graph(nodes, "g", io[:1], io[1:], [w]),
                                        opset_imports=[helper.make_opsetid("", 13)]), str(path))
            x = rng.random((1, c, hw, hw), dtype=np.float32)
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            q = nncf.quantize(ov.convert_model(str(path)), nncf.Dataset([x, x * 0.5]), subset_size=2)
            req = ov.Core().compile_model(q, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                     "INFERENCE_NUM_THREADS": 1}).create_infer_request()
            t = _interleave({"ort": lambda s=s, x=x: s.run(None, {"x": x}), "int8": lambda r=req, x=x: r.infer([x])},
                            rounds)
            mmac = 2 * c * c * 9 * hw * hw / 1e6
            rows.append({"channels": c, "hw": hw, "ort_fp32_ms": round(t["ort"], 3), "int8_ms": round(t["int8"], 3),
                         "ort_gmac_s": round(mmac / t["ort"], 1), "int8_gmac_s": round(mmac / t["int8"], 1),
                         "speedup": round(t["ort"] / t["int8"], 2)})
    return rows


def _interleave(fns: dict[str, Any], rounds: int, per: int = 10) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(rounds):
        for k, f in fns.items():
            for _ in range(per):
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}


def print_profile(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"where the detector's time goes ({doc['shape']}, 1 thread, per-layer profilers)")
    for col in ("group", "MMAC", "ORT FP32 ms", "INT8 ms", "speedup"):
        t.add_column(col)
    for r in doc["groups"]:
        sp = f"{r['ort_ms'] / r['int8_ms']:.2f}x" if r["ort_ms"] and r["int8_ms"] else "-"
        t.add_row(r["group"], f"{r['mmac']:.0f}", f"{r['ort_ms']:.3f}", f"{r['int8_ms']:.3f}", sp)
    t.add_row("total", f"{doc['conv_mmac']:.0f}", f"{doc['ort_fp32_ms']:.3f}", f"{doc['int8_ms']:.3f}",
              f"{doc['ceilings']['measured']:.2f}x")
    Console(width=200).print(t)
    print(f"ceilings vs ORT FP32: {doc['ceilings']} (ORT FP32 {doc['ort_fp32_gmac_s']} GMAC/s overall; "
          f"INT8 convs {doc['int8_conv_gmac_s']} GMAC/s)")
    for r in doc.get("micro", []):
        print(f"  micro: 2x conv {r['channels']}->{r['channels']} 3x3 @{r['hw']}x{r['hw']}: ORT FP32 "
              f"{r['ort_gmac_s']} GMAC/s, INT8 {r['int8_gmac_s']} GMAC/s, {r['speedup']}x")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "compiler"))
    import real_models as rm

    doc = profile(rm.nudenet_onnx(), Path(sys.argv[1]), {"images": rm.images(1, 2)})
    doc["micro"] = conv_micro()
    print_profile(doc)
