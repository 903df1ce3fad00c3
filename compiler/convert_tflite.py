"""PyTorch to TFLite with litert-torch (no TensorFlow), INT8 through ai-edge-quantizer.

int8  -> recipe static_wi8_ai8 with calibration: a full-integer model whose inputs and
         outputs are int8 (callers quantize with the tensor's scale and zero point).
mixed -> recipe dynamic_wi8_afp32: int8 weights, float activations.
fp32  -> the plain conversion.
ONNX-only sources cannot take this path: converting ONNX to TFLite needs onnx2tf or onnx2torch,
which this project does not allow; the error says to pass the PyTorch model instead.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compiler.data import Dataset
from compiler.errors import CompileInputError
from compiler.loading import eval_mode

TFLITE_PRECISIONS = ("int8", "mixed", "fp32")
ONNX_ONLY_MESSAGE = (
    "TFLite needs the PyTorch model: this build only has an ONNX file, and ONNX-to-TFLite converters "
    "(onnx2tf, onnx2torch) are not allowed in this environment. Pass --torch module:function (or a "
    "torch.export .pt2 file) instead of --onnx, or choose an ONNX/OpenVINO device class.")


@dataclass(frozen=True)
class TFLiteConfig:
    precision: str = "int8"
    calibration_samples: int = 128


def _quiet() -> contextlib.AbstractContextManager[Any]:
    return contextlib.redirect_stdout(io.StringIO())


def convert_tflite(model: Any, example: dict[str, np.ndarray], dst: Path, cfg: TFLiteConfig,
                   calib: Dataset | None = None) -> Path:
    """Convert (batch 1, the LiteRT norm for edge inference) and quantize to `dst`."""
    if model is None:
        raise CompileInputError(ONNX_ONLY_MESSAGE)
    if cfg.precision not in TFLITE_PRECISIONS:
        raise CompileInputError(f"TFLite precision {cfg.precision!r} is not supported; use one of "
                                f"{', '.join(TFLITE_PRECISIONS)}")
    import litert_torch
    import torch

    sample = tuple(torch.from_numpy(np.ascontiguousarray(v[:1])) for v in example.values())
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmpdir:
        fp32 = Path(tmpdir) / "fp32.tflite"
        with _quiet():
            litert_torch.convert(eval_mode(model), sample).export(str(fp32))
        if cfg.precision == "fp32":
            dst.write_bytes(fp32.read_bytes())
            return dst
        from ai_edge_quantizer import quantizer, recipe

        rec = recipe.static_wi8_ai8() if cfg.precision == "int8" else recipe.dynamic_wi8_afp32()
        q = quantizer.Quantizer(str(fp32), rec)
        calibration = None
        if q.need_calibration:
            if calib is None:
                raise CompileInputError("full-integer TFLite INT8 needs calibration data (--calib)")
            calibration = q.calibrate(_calibration_data(fp32, calib.take(cfg.calibration_samples)), num_threads=1)
        with _quiet():
            result = q.quantize(calibration, enable_progress_report=False)
        dst.write_bytes(bytes(result.quantized_model))
    return dst


def _calibration_data(fp32: Path, ds: Dataset) -> dict[str, list[dict[str, np.ndarray]]]:
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_path=str(fp32)).get_signature_list()
    key = next(iter(signatures))
    names = signatures[key]["inputs"]
    arrays = list(ds.inputs.values())
    return {key: [{n: a[i:i + 1] for n, a in zip(names, arrays, strict=True)} for i in range(ds.n)]}


def tflite_tensor_specs(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Specs with the real dtypes; quantized tensors carry {"scale", "zero_point"} for the agent."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    sig = it.get_signature_list()
    key = next(iter(sig))

    def spec(d: dict[str, Any], sig_name: str) -> dict[str, Any]:
        out: dict[str, Any] = {"name": d["name"], "signature_name": sig_name, "signature_key": key,
                               "shape": [int(x) for x in d["shape"]], "dtype": np.dtype(d["dtype"]).name}
        if out["shape"] and out["shape"][0] == 1:
            out["batch_axis"] = 0  # fixed batch 1: the agent's LiteRT runtime runs a batch row by row
        scale, zp = d["quantization"]
        if scale:
            out["quantization"] = {"scale": float(scale), "zero_point": int(zp)}
        return out

    ins = [spec(d, n) for d, n in zip(it.get_input_details(), sig[key]["inputs"], strict=False)]
    outs = [spec(d, n) for d, n in zip(it.get_output_details(), sig[key]["outputs"], strict=False)]
    return ins, outs
