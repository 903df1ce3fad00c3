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
from typing import Any, ClassVar

import numpy as np

from agent.runtime_specs import natural_key
from compiler.data import Dataset
from compiler.errors import CompileInputError
from compiler.loading import eval_mode
from compiler.passes import PassConfig

RECIPES: dict[str, str | None] = {"int8": "static_wi8_ai8", "mixed": "dynamic_wi8_afp32", "fp32": None}
TFLITE_PRECISIONS = tuple(RECIPES)
ONNX_ONLY_MESSAGE = (
    "TFLite needs the PyTorch model: this build only has an ONNX file, and ONNX-to-TFLite converters "
    "(onnx2tf, onnx2torch) are not allowed in this environment. Pass --torch module:function (or a "
    "torch.export .pt2 file) instead of --onnx, or choose an ONNX/OpenVINO device class.")


@dataclass(frozen=True)
class TFLiteConfig(PassConfig):
    """The TFLite pass: its fields are the lineage record's config and the pass's cache key."""

    PASS: ClassVar[str] = "convert"
    TOOL: ClassVar[str | None] = "litert_torch.convert"
    precision: str = "int8"
    calibration_samples: int = 128  # read by full-integer INT8 only
    batch: int = 1  # the LiteRT norm for edge inference

    @property
    def recipe(self) -> str | None:
        """The ai-edge-quantizer recipe this precision takes (None: float, no quantizer)."""
        return RECIPES[self.precision]


def _quiet() -> contextlib.AbstractContextManager[Any]:
    return contextlib.redirect_stdout(io.StringIO())


def convert_tflite(model: Any, example: dict[str, np.ndarray], dst: Path, cfg: TFLiteConfig,
                   calib: Dataset | None = None) -> Path:
    """Convert (at cfg.batch, 1 by default) and quantize to `dst`."""
    if model is None:
        raise CompileInputError(ONNX_ONLY_MESSAGE)
    if cfg.precision not in TFLITE_PRECISIONS:
        raise CompileInputError(f"TFLite precision {cfg.precision!r} is not supported; use one of "
                                f"{', '.join(TFLITE_PRECISIONS)}")
    import litert_torch
    import torch

    sample = tuple(torch.from_numpy(np.ascontiguousarray(v[:cfg.batch])) for v in example.values())
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmpdir:
        fp32 = Path(tmpdir) / "fp32.tflite"
        with _quiet():
            litert_torch.convert(eval_mode(model), sample).export(str(fp32))
        quantize_tflite(fp32, dst, cfg, calib)
    return dst


def quantize_tflite(fp32: Path, dst: Path, cfg: TFLiteConfig, calib: Dataset | None) -> Path:
    """A float .tflite to `dst` at cfg.precision with ai-edge-quantizer (fp32: copied as is)."""
    if cfg.precision == "fp32":
        dst.write_bytes(Path(fp32).read_bytes())
        return dst
    from ai_edge_quantizer import quantizer, recipe

    rec = getattr(recipe, str(cfg.recipe))()
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
    """One batch-1 feed per sample, in the signature's own dtypes: int64 token ids become the int32
    the converter made of them, range-checked (agent.runtimes.litert_runtime.to_tensor) as on the device."""
    from ai_edge_litert.interpreter import Interpreter

    from agent.runtimes.litert_runtime import to_tensor

    it = Interpreter(model_path=str(fp32))
    key = next(iter(it.get_signature_list()))
    details = it.get_signature_runner(key).get_input_details()
    names = sorted(details, key=natural_key)
    arrays = list(ds.inputs.values())
    return {key: [{n: to_tensor(n, a[i:i + 1], np.dtype(details[n]["dtype"]), (0.0, 0))
                   for n, a in zip(names, arrays, strict=True)} for i in range(ds.n)]}
