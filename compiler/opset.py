"""Upgrade old ONNX graphs before quantizing: per-channel QDQ needs DequantizeLinear's `axis` (opset 13).

Without this, static INT8 of an opset-12 model wrote a graph onnxruntime refused ("Unrecognized
attribute: axis"). The upgrade is a pass of its own in the lineage, with the opsets it went between.
"""

from __future__ import annotations

from typing import Any

MIN_QDQ_OPSET = 13


def default_opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def upgrade_opset(model: Any, target: int = MIN_QDQ_OPSET) -> tuple[Any, dict[str, Any] | None]:
    """(model, lineage config) upgraded to `target`; the model unchanged and None when already there.

    A graph the converter cannot upgrade is kept as it is, with the converter's message recorded:
    the candidates that need the newer opset then fail on their own, each as a FAIL row."""
    from onnx import version_converter

    source = default_opset(model)
    if source >= target:
        return model, None
    try:
        upgraded = version_converter.convert_version(model, target)
    except Exception as exc:  # the converter has no adapter for some old operators
        return model, {"tool": "onnx.version_converter", "from_opset": source, "to_opset": target,
                       "upgraded": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    return upgraded, {"tool": "onnx.version_converter", "from_opset": source, "to_opset": target, "upgraded": True}
