"""The manifest's runtime_config as the agent applies it (agent/runtimes/config.py): OpenVINO
properties and threads, the TFLite tensor binding, and refusals of a config the agent cannot honour."""

from __future__ import annotations

import numpy as np
import pytest

from agent.runtimes.base import RuntimeLoadError, RuntimeOptions, load_runtime
from agent.runtimes.litert_runtime import to_tensor
from agent.spec_check import InputError


def _prop(runtime, name: str) -> str:
    return str(runtime.compiled.get_property(name))


def test_openvino_applies_the_manifest_properties_and_threads(model_files) -> None:
    xml = model_files["openvino_v1"]
    rt = load_runtime("openvino", xml, RuntimeOptions(threads=2), {
        "model": {"precision": "fp16"},
        "runtime_config": {"threads": 1, "openvino": {"INFERENCE_PRECISION_HINT": "f32",
                                                      "PERFORMANCE_HINT": "THROUGHPUT"}}})
    assert _prop(rt, "INFERENCE_PRECISION_HINT") in ("f32", "<Type: 'float32'>")
    assert _prop(rt, "PERFORMANCE_HINT") == "THROUGHPUT"
    assert int(rt.compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    # No section (a plain `bundle build`): f32 as the compiler gates, the device's threads.
    plain = load_runtime("openvino", xml, RuntimeOptions(threads=2), {"model": {"precision": "fp16"}})
    assert _prop(plain, "INFERENCE_PRECISION_HINT") in ("f32", "<Type: 'float32'>")
    assert int(plain.compiled.get_property("INFERENCE_NUM_THREADS")) == 2


def test_openvino_serves_static_shape_variants_equal_to_the_dynamic_model(model_files, digits) -> None:
    """shape_cache: a variant per input shape (the interface stays dynamic), least recently used out,
    outputs bitwise equal to the dynamic model's; without the field only the dynamic model runs."""
    xml = model_files["openvino_v1"]
    cached = load_runtime("openvino", xml, RuntimeOptions(), {"runtime_config": {"threads": 1, "shape_cache": 2}})
    plain = load_runtime("openvino", xml, RuntimeOptions(), {"runtime_config": {"threads": 1}})
    assert plain.static is None and cached.static is not None
    x = digits[0]
    for n in (1, 3, 1, 5):
        (got,), (want,) = cached.run({"x": x[:n]}), plain.run({"x": x[:n]})
        assert got.shape == (n, 10) and np.array_equal(got, want)
    shapes = [dict(k)["x"] for k in cached.static.variants]
    assert shapes == [(1, 64), (5, 64)] and cached.static.compiles == 3  # batch 3 was evicted, batch 1 reused


@pytest.mark.parametrize("fmt, rc, message", [
    ("openvino", {"openvino": {"CACHE_DIR": "/tmp"}}, "'CACHE_DIR' is not one a bundle may set"),
    ("openvino", {"openvino": {"INFERENCE_PRECISION_HINT": "f8"}}, "INFERENCE_PRECISION_HINT must be one of"),
    ("openvino", {"shape_cache": -1}, "runtime_config.shape_cache must be an integer 0..64"),
    ("openvino", {"shape_cache": "4"}, "runtime_config.shape_cache must be an integer 0..64"),
    ("onnx", {"threads": 0}, "runtime_config.threads must be an integer"),
    ("onnx", {"threads": True}, "runtime_config.threads must be an integer"),
    ("tflite", {"tflite": {"inputs": [{"name": "x", "tensor": "nope"}]}}, "do not match the model's input tensors"),
    ("tflite", {"tflite": {"io": "int8"}}, "runtime_config.tflite.io must be one of"),
    ("tflite", {"tflite": {"inputs": "x"}}, "runtime_config.tflite.inputs must be a list"),
])
def test_a_config_the_agent_cannot_honour_is_a_load_error(model_files, fmt, rc, message) -> None:
    path = {"onnx": model_files["onnx_v1"], "openvino": model_files["openvino_v1"],
            "tflite": model_files["tflite_v1"]}[fmt]
    with pytest.raises(RuntimeLoadError, match=message):
        load_runtime(fmt, path, RuntimeOptions(), {"runtime_config": rc})


def test_tflite_binding_names_the_source_tensors(model_files, digits) -> None:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(model_files["tflite_v1"]))
    tin, tout = it.get_input_details()[0]["name"], it.get_output_details()[0]["name"]
    manifest = {"inputs": [{"name": "pixels", "dtype": "float32", "shape": [1, 64], "batch_axis": 0}],
                "runtime_config": {"tflite": {"io": "float", "inputs": [{"name": "pixels", "tensor": tin}],
                                              "outputs": [{"name": "logits", "tensor": tout}]}}}
    rt = load_runtime("tflite", model_files["tflite_v1"], RuntimeOptions(), manifest)
    assert rt.input_names == ["pixels"]
    (out,) = rt.run({"pixels": digits[0][:3]})
    assert out.shape == (3, 10) and out.dtype == np.float32


def test_integer_narrowing_is_range_checked() -> None:
    ids = np.array([[1, 2, 2**31 - 1]], np.int64)
    assert to_tensor("ids", ids, np.dtype(np.int32), (0.0, 0)).dtype == np.int32
    with pytest.raises(InputError, match=r"'ids' has values 1\.\.2147483648; this TFLite model takes int32"):
        to_tensor("ids", ids + np.array([[0, 0, 1]]), np.dtype(np.int32), (0.0, 0))
    q = to_tensor("x", np.array([0.5], np.float32), np.dtype(np.int8), (0.5, 3))
    assert q.dtype == np.int8 and int(q[0]) == 4
