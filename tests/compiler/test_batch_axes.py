"""Per-input batch axes and scalar inputs (issue 13: silero-vad's ONNX has its recurrent state as
(2, batch, 128) and the sample rate as a scalar int64): the specs say where each input's samples lie,
the data is checked, cut and hashed on those axes, and a model built from them serves the same
outputs as its FP32 source."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.runtime_specs import label_dims
from compiler.architecture import NothingQuantized, check_quantized
from compiler.data import Dataset, align_to_specs, spec_batch_axis, validate_dataset
from compiler.errors import CompileInputError
from compiler.export import onnx_tensor_specs

N = 24


@pytest.mark.parametrize("dims, want", [
    ([None, None], ["batch", "dim1"]),
    (["N", "seq"], ["batch", "seq"]),
    ([2, None, 128], [2, "batch", 128]),  # a recurrent state: its batch is axis 1
    ([1, 3, None, None], [1, 3, "dim2", "dim3"]),  # a fixed batch of 1: no symbolic batch
    ([], []),  # a scalar
])
def test_each_tensor_names_its_own_batch_axis(dims, want) -> None:
    assert label_dims(dims) == want


def _stateful(path, *, in_if: bool = False) -> None:
    """y = x @ W + state[0] * 0.5 + sr / 16000: a state (2, N, 3) and a scalar sample rate, like silero-vad.
    `in_if` puts it all inside the branches of an If on the rate, as silero-vad does with its network."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
             *(numpy_helper.from_array(np.array(v, dtype=np.float32), n) for n, v in (("half", 0.5), ("rate", 16000.0)))]

    def body(tag: str) -> list:
        return [helper.make_node("MatMul", ["x", "W"], [f"xw{tag}"]),
                helper.make_node("Gather", ["state", "zero"], [f"s0{tag}"], axis=0),
                helper.make_node("Mul", [f"s0{tag}", "half"], [f"s0h{tag}"]),
                helper.make_node("Cast", ["sr"], [f"srf{tag}"], to=TensorProto.FLOAT),
                helper.make_node("Div", [f"srf{tag}", "rate"], [f"srn{tag}"]),
                helper.make_node("Add", [f"xw{tag}", f"s0h{tag}"], [f"a{tag}"]),
                helper.make_node("Add", [f"a{tag}", f"srn{tag}"], [f"y{tag}"])]

    nodes = body("")
    if in_if:
        branches = {k: helper.make_graph(body(f"_{k}"), k, [], [helper.make_tensor_value_info(f"y_{k}", TensorProto.FLOAT,
                                                                                             None)])
                    for k in ("then", "else")}
        nodes = [helper.make_node("Constant", [], ["rate_i"], value=numpy_helper.from_array(np.array(16000), "r")),
                 helper.make_node("Equal", ["sr", "rate_i"], ["is16k"]),
                 helper.make_node("If", ["is16k"], ["y"], then_branch=branches["then"], else_branch=branches["else"])]
    graph = helper.make_graph(
        nodes, "stateful",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "n", 3]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _data(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(0, 1, (n, 8)).astype(np.float32), "state": rng.normal(0, 1, (2, n, 3)).astype(np.float32),
            "sr": np.full(n, 16000, np.int64)}


def test_specs_place_the_batch_per_input_and_the_data_is_cut_on_it(tmp_path) -> None:
    _stateful(tmp_path / "m.onnx")
    specs, _ = onnx_tensor_specs(tmp_path / "m.onnx")
    assert [s["shape"] for s in specs] == [["batch", 8], [2, "batch", 3], []]
    assert [spec_batch_axis(s) for s in specs] == [0, 1, None]
    ds = align_to_specs(Dataset(_data(N, 1)), specs)
    validate_dataset(ds, specs, task="regression")
    assert ds.n == N and ds.inputs["sr"].shape == () and int(ds.inputs["sr"]) == 16000
    feeds = ds.batches(10)
    assert [f["state"].shape for f in feeds] == [(2, 10, 3), (2, 10, 3), (2, 4, 3)]
    assert all(f["sr"].shape == () for f in feeds) and feeds[2]["x"].shape == (4, 8)
    np.testing.assert_array_equal(feeds[1]["state"], _data(N, 1)["state"][:, 10:20])
    picked = ds.select(np.array([5, 2]))
    np.testing.assert_array_equal(picked.inputs["state"], _data(N, 1)["state"][:, [5, 2]])
    assert ds.take(3).inputs["state"].shape == (2, 3, 3) and ds.take(3).n == 3
    # The layout is part of the data's identity (cache key, provenance).
    assert Dataset(ds.inputs).sha256() != ds.sha256()


@pytest.mark.parametrize("change, message", [
    ({"sr": np.array([16000, 8000] * (N // 2))}, "input 'sr' is a scalar the model takes once per call, but the "
                                                 "data holds 2 different values (8000, 16000); give one"),
    ({"state": np.zeros((N, 2, 3), np.float32)}, "(axis 0 is 24, expected 2; its samples go on axis 1)"),
    ({"state": np.zeros((2, N - 1, 3), np.float32)}, "input 'state' has 23 samples, others have 24"),
    ({"sr": np.zeros((N, 1), np.int64)}, "input 'sr' has shape (24, 1), the model expects rank 0"),
])
def test_bad_layouts_are_refused_in_one_line(tmp_path, change, message) -> None:
    _stateful(tmp_path / "m.onnx")
    specs, _ = onnx_tensor_specs(tmp_path / "m.onnx")
    with pytest.raises(CompileInputError) as err:
        validate_dataset(align_to_specs(Dataset({**_data(N, 1), **change}), specs, "--eval"), specs,
                         task="regression", role="--eval")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_stateful_model_with_a_scalar_input_builds_and_serves_its_source_outputs(build, keys, tmp_path) -> None:
    from agent.bundle import verify_bundle
    from agent.keys import Keyring
    from compiler.runtimes import open_runner

    _stateful(tmp_path / "m.onnx")
    ev = _data(N, 2)
    [res] = build(onnx=str(tmp_path / "m.onnx"), calib=_data(16, 1), eval=ev, task="regression",
                  device_classes=["x86-64-generic"], precision="auto", max_latency_ms=1e9)
    assert res.passed, [g for c in res.candidates for g in c["gates"] if not g["passed"]]
    # INT8 was calibrated and evaluated on the same layout (state cut on axis 1): a measured row, no error.
    int8 = next(c for c in res.candidates if c["precision"] == "int8")
    assert int8["error"] is None and int8["gates"]
    vb = verify_bundle(res.bundle_path, Keyring.from_files([keys[1]]), unpack_to=tmp_path / "unpacked")
    assert [s["shape"] for s in vb.manifest["inputs"]] == [["batch", 8], [2, "batch", 3], []]
    # The served bundle takes a batch of 5 as the source does: state (2, 5, 3), one sample rate.
    feed = {"x": ev["x"][:5], "state": ev["state"][:, :5], "sr": np.array(16000)}
    served = open_runner(res.format, vb.path / vb.manifest["entrypoint"], manifest=vb.manifest).run(feed)
    want = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, feed)[0]
    np.testing.assert_allclose(served, want, atol=0.05)
    assert res.metrics["metric"] >= 0.99


def test_an_int8_build_that_quantizes_nothing_is_a_fail_row_not_fp32_labelled_int8(build, tmp_path) -> None:
    """silero-vad keeps its network inside If bodies, which onnxruntime's quantizer does not enter."""
    _stateful(tmp_path / "m.onnx", in_if=True)
    [res] = build(onnx=str(tmp_path / "m.onnx"), calib=_data(16, 1), eval=_data(N, 2), task="regression",
                  device_classes=["x86-64-generic"], precision="auto", max_latency_ms=1e9)
    int8 = next(c for c in res.candidates if c["precision"] == "int8")
    assert not int8["passed"] and "quantized no operator" in int8["error"] and "compute operators (" in int8["error"]
    assert "If/Loop bodies" in int8["error"]
    assert res.passed and res.precision in ("fp16", "fp32")  # auto moves on to an honest float build
    with pytest.raises(NothingQuantized):
        check_quantized(tmp_path / "m.onnx", "onnx", "int8")
    check_quantized(tmp_path / "m.onnx", "onnx", "fp16")  # float precisions are not inspected
