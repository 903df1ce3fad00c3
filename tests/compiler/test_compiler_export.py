"""PyTorch to ONNX: dynamo with a symbolic batch axis; the legacy exporter as a tested fallback."""

from __future__ import annotations

import numpy as np
import pytest

import compiler.export as export
from compiler.export import ExportConfig, export_torch, onnx_tensor_specs
from compiler.runtimes import OnnxRunner


def _check(path, mlp, digits) -> None:
    import torch

    specs, outs = onnx_tensor_specs(path)
    assert specs == [{"name": "input", "shape": ["batch", 64], "dtype": "float32"}]
    assert outs[0]["shape"] == ["batch", 10]
    runner = OnnxRunner(path)
    for n in (1, 7):  # the batch axis really is dynamic
        x = digits["x_test"][:n]
        with torch.no_grad():
            np.testing.assert_allclose(runner.run({"input": x}), mlp(torch.from_numpy(x)).numpy(), atol=1e-4)


def test_dynamo_export(mlp, digits, tmp_path) -> None:
    res = export_torch(mlp, {"input": digits["x_test"][:2]}, tmp_path / "m.onnx")
    assert res.exporter == "dynamo" and not res.fallback_reason
    _check(res.path, mlp, digits)
    again = export_torch(mlp, {"input": digits["x_test"][:2]}, tmp_path / "m2.onnx")
    assert res.path.read_bytes() == again.path.read_bytes()
    assert not list(tmp_path.glob("*.data"))


def test_legacy_fallback_when_dynamo_fails(mlp, digits, tmp_path, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::imaginary")

    monkeypatch.setattr(export, "_export_dynamo", broken)
    res = export_torch(mlp, {"input": digits["x_test"][:2]}, tmp_path / "m.onnx")
    assert res.exporter == "legacy" and "aten::imaginary" in res.fallback_reason
    _check(res.path, mlp, digits)
    from compiler.errors import CompileInputError

    with pytest.raises(CompileInputError, match="dynamo=True"):
        export_torch(mlp, {"input": digits["x_test"][:2]}, tmp_path / "d.onnx", ExportConfig(exporter="dynamo"))
