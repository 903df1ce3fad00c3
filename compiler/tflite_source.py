"""`edgefleet compile --tflite model.tflite`: a TFLite model as the source, for TFLite device classes.

The source is its own reference: the gate runs it and every candidate in LiteRT (through the
agent's runtime) on the eval data. A candidate is the source bundled as is, or, when the class
wants INT8 (or mixed) and the source is float, the source re-quantized with ai-edge-quantizer
(the same recipes as compiler.convert_tflite). An already quantized source is never quantized
again: a candidate asking for another precision fails with a row that says so.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from agent.canonical import file_sha256
from compiler.errors import CompileInputError


def check_source(path: str) -> Path:
    from agent.runtime_specs import FORMAT_NAMES, detect_format

    p = Path(path)
    if not p.is_file():
        raise CompileInputError(f"--tflite {p}: no such file")
    found = detect_format(p)
    if found != "tflite":
        hint = {"onnx": "; use --onnx"}.get(found or "", "")
        raise CompileInputError(f"--tflite {p} is not a TFLite flatbuffer"
                                + (f" (it is {FORMAT_NAMES[found]}{hint})" if found else ""))
    try:
        from agent.runtime_specs import tflite_io_specs

        tflite_io_specs(p)
    except Exception as exc:  # LiteRT raises ValueError/RuntimeError on a broken flatbuffer
        raise CompileInputError(f"--tflite {p}: LiteRT cannot read it: {str(exc).splitlines()[0][:300]}") from exc
    return p


def source_precision(path: Path) -> str:
    """int8 (quantized I/O or activations), mixed (int8 weights only) or fp32."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    io = [*it.get_input_details(), *it.get_output_details()]
    if any(d["quantization"][0] and d["dtype"].__name__ in ("int8", "uint8") for d in io):
        return "int8"
    if any(d["dtype"].__name__ in ("int8", "uint8") and d["quantization"][0] for d in it.get_tensor_details()):
        return "mixed"
    return "fp32"


def build_from_tflite(precision: str, ctx: Any, work: Path) -> Any:
    """The Artifact for one candidate precision (see the module docstring)."""
    from compiler.convert_tflite import TFLiteConfig, quantize_tflite
    from compiler.passes import Artifact

    src: Path = ctx.tflite_src
    have = source_precision(src)
    want = "mixed" if precision == "dynamic-int8" else precision
    dst = work / "model.tflite"
    if want == have:
        shutil.copyfile(src, dst)
        conf: dict[str, Any] = {"tool": "copy", "source_precision": have}
    elif have == "fp32":
        quantize_tflite(src, dst, TFLiteConfig(precision=want, calibration_samples=ctx.calibration_samples), ctx.calib)
        recipe = {"int8": "static_wi8_ai8", "mixed": "dynamic_wi8_afp32"}[want]
        conf = {"tool": "ai_edge_quantizer", "recipe": recipe, "source_precision": have}
        if recipe == "static_wi8_ai8":
            conf["calibration_samples"] = min(ctx.calibration_samples, ctx.calib.n)
    else:
        raise ValueError(f"the TFLite source is already {have}; it is bundled as is by the {have} candidate, "
                         f"not re-quantized to {want}")
    rec = {"pass": "tflite-source", "config": conf, "input_sha256": file_sha256(src), "output_sha256": file_sha256(dst)}
    return Artifact("tflite", want, {"model.tflite": dst}, "model.tflite", [rec])


def prepare_context(cfg: Any, src: Path, calib: Any, evaluation: Any) -> tuple[Any, Any]:
    """(PassContext, reference outputs): the source's own outputs in LiteRT on the eval data."""
    from compiler.passes import PassContext
    from compiler.runtimes import open_runner, predict

    reference = predict(open_runner("tflite", src), evaluation)
    ctx = PassContext(src, None, None, evaluation.take(2).inputs, calib, evaluation, False, cfg.calibrate_method,
                      cfg.calibration_samples, tflite_src=src)
    return ctx, reference
