"""ONNX to OpenVINO IR: convert_model, then NNCF INT8 (with accuracy control under a drop budget).

`compress_to_fp16` is always passed explicitly: its default (True) would silently turn an
"FP32" build into FP16 weights.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from compiler.data import Dataset
from compiler.passes import PassConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenVINOConfig(PassConfig):
    """The OpenVINO pass: its fields are the lineage record's config and the pass's cache key."""

    PASS: ClassVar[str] = "convert"
    TOOL: ClassVar[str | None] = "openvino.convert_model"
    precision: str = "int8"  # int8 | fp16 | fp32
    calibration_samples: int = 128  # read by INT8 only
    transformer: bool = False
    max_drop: float | None = None  # set: nncf.quantize_with_accuracy_control (classification)
    fast_bias_correction: bool = True
    scheme: Any = None  # compiler.schemes.OpenVINOScheme; None: NNCF defaults (or TRANSFORMER if set above)
    ignored_nodes: tuple[str, ...] = ()  # returned to float by the accuracy fallback
    # The device class's 7-bit weights (model.reduce_range): NNCF's overflow fix on every layer, not
    # only the first (its default). OpenVINO's AVX2 INT8 kernels saturate like ORT's without VNNI.
    reduce_range: bool = False


def _calib_items(ds: Dataset) -> list[dict[str, np.ndarray]]:
    return ds.batches(1)


def _accuracy_fn(labels: np.ndarray):
    def validate(compiled: Any, items: Any) -> float:
        out = compiled.output(0)
        preds = [int(np.argmax(compiled(item)[out])) for item in items]
        return float(np.mean(np.asarray(preds) == labels[: len(preds)]))

    return validate


def convert_openvino(src_onnx: Path, dst_xml: Path, cfg: OpenVINOConfig, calib: Dataset | None = None,
                     validation: Dataset | None = None) -> dict[str, Any]:
    """Write `dst_xml` (+ .bin); return what actually ran (quantizer, accuracy control) for lineage."""
    import openvino as ov

    model = ov.convert_model(str(src_onnx))
    info: dict[str, Any] = {"quantizer": None}
    if cfg.precision == "int8":
        import nncf

        assert calib is not None, "INT8 needs calibration data"
        items = _calib_items(calib.take(cfg.calibration_samples))
        kwargs: dict[str, Any] = {"subset_size": len(items), "fast_bias_correction": cfg.fast_bias_correction}
        if cfg.scheme is not None:
            kwargs.update(cfg.scheme.nncf_kwargs())
        elif cfg.transformer:
            kwargs["model_type"] = nncf.ModelType.TRANSFORMER
        if cfg.reduce_range:
            advanced = kwargs.setdefault("advanced_parameters", nncf.AdvancedQuantizationParameters())
            advanced.overflow_fix = nncf.OverflowFix.ENABLE
        if cfg.ignored_nodes:
            # validate=False: a node the ONNX frontend fused away is simply not there to ignore.
            kwargs["ignored_scope"] = nncf.IgnoredScope(names=list(cfg.ignored_nodes), validate=False)
        if cfg.max_drop is not None and validation is not None and validation.labels is not None:
            model = nncf.quantize_with_accuracy_control(
                model, nncf.Dataset(items), nncf.Dataset(_calib_items(validation)),
                validation_fn=_accuracy_fn(validation.labels), max_drop=cfg.max_drop,
                drop_type=nncf.DropType.ABSOLUTE, **kwargs)
            info["quantizer"] = "nncf.quantize_with_accuracy_control"
        else:
            model = nncf.quantize(model, nncf.Dataset(items), **kwargs)
            info["quantizer"] = "nncf.quantize"
    _stable_names(model)
    dst_xml = Path(dst_xml)
    dst_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(dst_xml), compress_to_fp16=(cfg.precision == "fp16"))
    info["compress_to_fp16"] = cfg.precision == "fp16"
    return info


_AUTO_NAME = re.compile(r"^([A-Za-z]+)_\d+$")


def _stable_names(model: Any) -> None:
    """OpenVINO names new nodes from a process-wide counter (Constant_19457): the second build in a
    process would write a different XML. Renumber such names by graph position instead."""
    for i, op in enumerate(model.get_ordered_ops()):
        match = _AUTO_NAME.match(op.get_friendly_name())
        if match:
            op.set_friendly_name(f"{match.group(1)}_n{i}")


def openvino_tensor_specs(xml: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    import openvino as ov

    model = ov.Core().read_model(str(xml))

    def spec(port: Any, i: int) -> dict[str, Any]:
        dims: list[Any] = []
        for axis, d in enumerate(port.get_partial_shape()):
            dims.append(d.get_length() if d.is_static else ("batch" if axis == 0 else f"dim{axis}"))
        names = sorted(port.get_names())
        dtype = np.dtype(port.get_element_type().to_dtype()).name
        return {"name": port.get_any_name() if names else f"tensor{i}", "shape": dims, "dtype": dtype}

    return ([spec(p, i) for i, p in enumerate(model.inputs)], [spec(p, i) for i, p in enumerate(model.outputs)])
