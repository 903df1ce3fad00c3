"""ONNX precision passes with onnxruntime: static QDQ INT8 (calibrated), dynamic INT8, FP16.

Static INT8 uses per-channel QInt8 weights and QUInt8 activations in QDQ form (the fast U8S8
path on x86 VNNI). `reduce_range` (the device class's `model.reduce_range`) quantizes weights to
7 bits: on AVX2 without VNNI, U8S8 kernels add u8*s8 pairs into int16 (vpmaddubsw) and saturate
at full range (onnxruntime's advice for non-VNNI CPUs; Optimum's avx2 preset does the same).
Dynamic INT8 suits transformer-like graphs (MatMul heavy, no stable activation range) but can
hurt small models: the gates decide, not this module.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from compiler.data import Dataset
from compiler.export import save_onnx
from compiler.passes import PassConfig, config_fields

log = logging.getLogger(__name__)
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class OnnxQuantConfig(PassConfig):
    """Base of the three ONNX precision passes; each mode records and keys only its own settings."""

    PASS: ClassVar[str] = "quantize"
    TOOL: ClassVar[str | None] = "onnxruntime.quantization"
    MODE: ClassVar[str] = ""

    def lineage(self) -> dict[str, Any]:
        return {"tool": self.TOOL, "mode": self.MODE, **config_fields(self)}

    def apply(self, src: Path, dst: Path, calib: Dataset | None) -> Path:
        raise NotImplementedError


@dataclass(frozen=True)
class StaticInt8(OnnxQuantConfig):
    """Calibrated QDQ INT8: per-channel QInt8 weights, QUInt8 activations."""

    MODE: ClassVar[str] = "static"
    calibrate_method: str = "minmax"
    per_channel: bool = True
    quant_format: str = "QDQ"
    activation_type: str = "quint8"
    weight_type: str = "qint8"
    calibration_samples: int = 128
    percentile: float = 99.999
    reduce_range: bool = False  # 7-bit weights: the device class's kernels saturate at full range
    op_types: tuple[str, ...] | None = None  # None: every operator ORT quantizes
    nodes_to_exclude: tuple[str, ...] = ()  # kept in float (architecture scheme, accuracy fallback)
    extra_options: dict[str, Any] = field(default_factory=dict)

    def apply(self, src: Path, dst: Path, calib: Dataset | None) -> Path:
        if calib is None:
            raise ValueError("static INT8 needs calibration data")
        return quantize_static_int8(src, dst, calib, self)


@dataclass(frozen=True)
class DynamicInt8(OnnxQuantConfig):
    """INT8 weights, activations quantized at run time (no calibration)."""

    MODE: ClassVar[str] = "dynamic"
    per_channel: bool = True
    weight_type: str = "qint8"
    reduce_range: bool = False  # 7-bit weights, as for StaticInt8
    nodes_to_exclude: tuple[str, ...] = ()

    def apply(self, src: Path, dst: Path, calib: Dataset | None) -> Path:
        return quantize_dynamic_int8(src, dst, self)


@dataclass(frozen=True)
class Fp16(OnnxQuantConfig):
    """FP16 weights and compute; float32 inputs and outputs kept so callers feed the same arrays."""

    MODE: ClassVar[str] = "fp16"
    keep_io_types: bool = True

    def apply(self, src: Path, dst: Path, calib: Dataset | None) -> Path:
        return convert_fp16(src, dst, self.keep_io_types)


def _reader(ds: Dataset):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(ds.batches(1))

        def get_next(self):  # type: ignore[override]
            return next(self._it, None)

    return Reader()


_PREPARED: dict[str, bytes] = {}  # source sha256 -> pre-processed model (the fallback re-quantizes it)


def _prepare(src: Path, work: Path) -> Path:
    """quant_pre_process: symbolic shape inference and graph optimisation before quantizing."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from agent.canonical import file_sha256

    out = work / "pre.onnx"
    key = file_sha256(src)
    if key in _PREPARED:
        out.write_bytes(_PREPARED[key])
        return out
    # ORT's symbolic inference drops a debug copy (sym_shape_infer_temp.onnx + <uuid>.data) into the
    # current directory when it gives up; run it inside the work dir so the user's folder stays clean.
    src, out = src.resolve(), out.resolve()
    with contextlib.chdir(work):
        try:
            quant_pre_process(str(src), str(out), skip_symbolic_shape=False)
        except Exception as exc:  # symbolic inference cannot handle every graph; plain ONNX inference can
            log.warning("quant_pre_process failed (%s); retrying without symbolic shape inference", exc)
            quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
    if len(_PREPARED) >= 4:
        _PREPARED.clear()
    _PREPARED[key] = out.read_bytes()
    return out


def _qtype(name: str):
    from onnxruntime.quantization import QuantType

    return {"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}[name]


def _resave(tmp: Path, dst: Path) -> Path:
    import onnx

    return save_onnx(onnx.load(str(tmp)), dst)


def quantize_static_int8(src: Path, dst: Path, calib: Dataset, cfg: StaticInt8) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.calibrate_method]
    extra = {**cfg.extra_options, **({"CalibPercentile": cfg.percentile} if cfg.calibrate_method == "percentile" else {})}
    with tempfile.TemporaryDirectory() as tmpdir:
        work = Path(tmpdir)
        pre = _prepare(src, work)
        out = work / "q.onnx"
        quantize_static(str(pre), str(out), _reader(calib.take(cfg.calibration_samples)),
                        quant_format=getattr(QuantFormat, cfg.quant_format), per_channel=cfg.per_channel,
                        reduce_range=cfg.reduce_range,
                        activation_type=_qtype(cfg.activation_type), weight_type=_qtype(cfg.weight_type),
                        calibrate_method=method, extra_options=extra,
                        op_types_to_quantize=list(cfg.op_types) if cfg.op_types else None,
                        nodes_to_exclude=list(cfg.nodes_to_exclude) or None,
                        calibration_cache_path=str(work / "calib_cache"))
        return _resave(out, dst)


def quantize_dynamic_int8(src: Path, dst: Path, cfg: DynamicInt8) -> Path:
    from onnxruntime.quantization import quantize_dynamic

    with tempfile.TemporaryDirectory() as tmpdir:
        work = Path(tmpdir)
        pre = _prepare(src, work)
        out = work / "q.onnx"
        quantize_dynamic(str(pre), str(out), per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                         weight_type=_qtype(cfg.weight_type),
                         nodes_to_exclude=list(cfg.nodes_to_exclude) or None)
        return _resave(out, dst)


def convert_fp16(src: Path, dst: Path, keep_io_types: bool = True) -> Path:
    """FP16 weights and compute (float32 inputs/outputs kept unless told otherwise)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=keep_io_types)
    return save_onnx(model, dst)


def looks_like_transformer(path: Path) -> bool:
    """Attention (MatMul-Softmax-MatMul) with layer norms or GELU: see compiler.architecture."""
    from compiler.architecture import detect

    return detect(path).transformer


def run_onnx_pass(src: Path, dst: Path, calib: Dataset | None, cfg: OnnxQuantConfig) -> Path:
    """Apply one ONNX precision pass (StaticInt8, DynamicInt8 or Fp16) from `src` to `dst`."""
    return cfg.apply(src, dst, calib)
