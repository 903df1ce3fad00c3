"""onnxruntime.quantization passes on a real MLP: the graph has what each mode promises and still works."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from compiler.data import Dataset, load_dataset
from compiler.evaluate import agreement
from compiler.quantize_onnx import DynamicInt8, Fp16, StaticInt8, looks_like_transformer, run_onnx_pass
from compiler.runtimes import OnnxRunner, predict


@pytest.fixture(scope="module")
def reference(mlp_onnx, digits) -> np.ndarray:
    return predict(OnnxRunner(mlp_onnx), {"input": digits["x_test"]})


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_static_qdq_int8_per_channel(method, mlp_onnx, digits, reference, tmp_path) -> None:
    calib = Dataset({"input": digits["x_train"][:32]})
    out = run_onnx_pass(mlp_onnx, tmp_path / "q.onnx", calib, StaticInt8(calibrate_method=method))
    model = onnx.load(str(out))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 6
    scales = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    per_channel = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and scales.get(n.input[1]) is not None
                   and scales[n.input[1]].size > 1]
    assert per_channel, "weights should have one scale per output channel"
    assert out.stat().st_size < mlp_onnx.stat().st_size / 2.5
    assert agreement("classification", predict(OnnxRunner(out), {"input": digits["x_test"]}), reference) > 0.97


def test_dynamic_and_fp16(mlp_onnx, digits, reference, tmp_path) -> None:
    dyn = run_onnx_pass(mlp_onnx, tmp_path / "d.onnx", None, DynamicInt8())
    assert "DynamicQuantizeLinear" in {n.op_type for n in onnx.load(str(dyn)).graph.node}
    half = run_onnx_pass(mlp_onnx, tmp_path / "h.onnx", None, Fp16())
    model = onnx.load(str(half))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # io stays float32
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    for path in (dyn, half):
        assert agreement("classification", predict(OnnxRunner(path), {"input": digits["x_test"]}), reference) > 0.97


def test_transformer_detection(mlp_onnx, encoder, digits, tmp_path) -> None:
    from compiler.export import export_torch

    enc = export_torch(encoder, {"input": digits["x_test"][:2].reshape(-1, 8, 8)}, tmp_path / "enc.onnx").path
    assert looks_like_transformer(enc) and not looks_like_transformer(mlp_onnx)


def test_data_callable() -> None:
    ds = load_dataset("compiler_zoo:digits_eval", ["input"])
    assert ds.n == 597 and ds.labels is not None and ds.slices is not None
