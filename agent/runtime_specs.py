"""Tensor specs read from a model file itself (ONNX, OpenVINO IR, TFLite), and its format by magic.

ONNX goes through onnxruntime (no `onnx` package on devices); openvino and ai-edge-litert are
imported only when a file of theirs is read. TFLite files also give the runtime_config.tflite
binding (agent.runtimes.config) from the names the manifest uses to the TFLite tensors, so a
bundle keeps its source model's interface (names, integer dtypes, float I/O) on LiteRT.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from agent.manifest_check import MAGIC

ORT_TO_NUMPY = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}
Specs = list[dict[str, Any]]


FORMAT_NAMES = {"onnx": "an ONNX model", "openvino": "an OpenVINO IR", "tflite": "a TFLite flatbuffer"}


class SpecError(Exception):
    """The file's tensor specs cannot be read; the message says why in one line."""


def detect_format(path: Path) -> str | None:
    """"tflite", "openvino" or "onnx" from the file's first bytes (agent.manifest_check's magic)."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    return next((fmt for fmt in ("tflite", "openvino", "onnx") if MAGIC[fmt][0](head)), None)


def label_dims(dims: list[int | str | None]) -> list[int | str]:
    """Manifest dims for one tensor (static ints; symbolic ones by name or None): its batch axis is
    "batch" - axis 0 when that is symbolic, else (a recurrent state (2, ?, 128)) the first symbolic
    axis; a fixed leading 1 and a scalar have none. Other symbolic dims keep their name or `dim<axis>`."""
    lead = dims[0] if dims else 1
    batch = next((a for a, d in enumerate(dims) if not isinstance(d, int)), None) if lead != 1 else None
    return [d if isinstance(d, int) else ("batch" if a == batch else (d or f"dim{a}")) for a, d in enumerate(dims)]


def _dims(shape: list[Any]) -> list[int | str]:
    return [d if isinstance(d, int) else (d or "batch") for d in shape]


def onnx_io_specs(path: Path) -> tuple[Specs, Specs]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    def spec(a: Any) -> dict[str, Any]:
        return {"name": a.name, "dtype": ORT_TO_NUMPY.get(a.type, a.type), "shape": _dims(list(a.shape))}
    return [spec(a) for a in sess.get_inputs()], [spec(a) for a in sess.get_outputs()]


def openvino_io_specs(xml: Path) -> tuple[Specs, Specs]:
    import openvino as ov

    model = ov.Core().read_model(str(xml))

    def spec(port: Any, i: int) -> dict[str, Any]:
        dims = label_dims([d.get_length() if d.is_static else None for d in port.get_partial_shape()])
        name = port.get_any_name() if port.get_names() else f"tensor{i}"
        return {"name": name, "shape": dims, "dtype": np.dtype(port.get_element_type().to_dtype()).name}

    return [spec(p, i) for i, p in enumerate(model.inputs)], [spec(p, i) for i, p in enumerate(model.outputs)]


def natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def tflite_io_specs(path: Path, source: tuple[Specs, Specs] | None = None) -> tuple[Specs, Specs, dict[str, Any]]:
    """(inputs, outputs, runtime_config.tflite) for a TFLite file.

    The manifest names each tensor by the source model's name and dtype when `source` (the ONNX or
    PyTorch interface, in order) is given, else by the signature's own name; quantized tensors are
    float to callers. A fixed batch of 1 gets batch_axis 0 (the agent runs a batch row by row)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    signatures = it.get_signature_list()
    sig_names: dict[str, str] = {}
    ordered: tuple[list[str], list[str]] = ([], [])
    if signatures:
        runner = it.get_signature_runner(next(iter(signatures)))
        for k, details in enumerate((runner.get_input_details(), runner.get_output_details())):
            for sname in sorted(details, key=natural_key):  # args_0, args_1, ..., args_10: the call order
                sig_names[details[sname]["name"]] = sname
                ordered[k].append(details[sname]["name"])
    by_tensor = {d["name"]: d for d in [*it.get_input_details(), *it.get_output_details()]}
    if not signatures:
        ordered = ([d["name"] for d in it.get_input_details()], [d["name"] for d in it.get_output_details()])

    def one(tensor: str, src: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
        d = by_tensor[tensor]
        dtype = np.dtype(d["dtype"])
        scale, zp = d["quantization"]
        sig = [int(x) for x in d.get("shape_signature", d["shape"])]
        shape: list[int | str] = [x if x > 0 else ("batch" if axis == 0 else f"dim{axis}") for axis, x in enumerate(sig)]
        io_dtype = src["dtype"] if src else ("float32" if scale and dtype.kind in "iu" else dtype.name)
        spec: dict[str, Any] = {"name": src["name"] if src else sig_names.get(tensor, tensor), "shape": shape,
                                "dtype": io_dtype}
        if shape and shape[0] == 1:
            spec["batch_axis"] = 0
        binding: dict[str, Any] = {"name": spec["name"], "tensor": tensor, "dtype": dtype.name}
        if scale:
            binding["quantization"] = {"scale": float(scale), "zero_point": int(zp)}
        return spec, binding

    result: list[tuple[Specs, list[dict[str, Any]]]] = []
    for k in (0, 1):
        srcs = list(source[k]) if source else []
        if source and len(srcs) != len(ordered[k]):
            what = ("inputs", "outputs")[k]
            raise SpecError(f"{path.name} has {len(ordered[k])} {what}, the source model {len(srcs)}")
        pairs = [one(t, srcs[i] if srcs else None) for i, t in enumerate(ordered[k])]
        result.append(([p[0] for p in pairs], [p[1] for p in pairs]))
    (ins, in_b), (outs, out_b) = result
    return ins, outs, {"io": "float", "inputs": in_b, "outputs": out_b}


def io_specs(fmt: str, path: Path) -> tuple[Specs, Specs, dict[str, Any] | None]:
    """(inputs, outputs, runtime_config.tflite or None) read from the file. Raises SpecError."""
    try:
        if fmt == "onnx":
            return (*onnx_io_specs(path), None)
        if fmt == "openvino":
            return (*openvino_io_specs(path), None)
        if fmt == "tflite":
            return tflite_io_specs(path)
    except SpecError:
        raise
    except ImportError as exc:
        raise SpecError(f"reading {fmt} specs needs {exc.name or exc}; install edgefleet[{fmt}]") from exc
    except Exception as exc:  # each runtime raises its own types
        raise SpecError(f"cannot read tensor specs from {Path(path).name}: {str(exc).splitlines()[0][:200]}") from exc
    raise SpecError(f"unknown model format {fmt!r}")
