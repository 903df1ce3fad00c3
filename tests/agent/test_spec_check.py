import numpy as np
import pytest

from agent import wire
from agent.spec_check import InputError, TensorSpec, check_inputs

SPECS = [TensorSpec.from_dict({"name": "x", "shape": ["batch", 4], "dtype": "float32"}),
         TensorSpec.from_dict({"name": "ids", "shape": ["batch", "seq"], "dtype": "int64"})]


def test_valid_inputs_are_cast_and_symbols_bind() -> None:
    out = check_inputs({"x": np.ones((3, 4)), "ids": [[1, 2], [3, 4], [5, 6]]}, SPECS)
    assert out["x"].dtype == np.float32 and out["ids"].dtype == np.int64 and out["ids"].shape == (3, 2)


@pytest.mark.parametrize("inputs, msg", [
    ({"x": np.ones((3, 4))}, "missing input.*'ids'"),
    ({"x": np.ones((3, 4)), "ids": np.ones((3, 2), np.int64), "z": 1}, "unknown input.*'z'"),
    ({"x": np.ones((3, 5)), "ids": np.ones((3, 2), np.int64)}, "'x' dimension 1 is 5, expected 4"),
    ({"x": np.ones((3, 4)), "ids": np.ones((2, 2), np.int64)}, r"batch\) is 2, but another input has batch=3"),
    ({"x": np.ones((4,)), "ids": np.ones((3, 2), np.int64)}, "1 dimensions"),
    ({"x": np.ones((3, 4)), "ids": np.full((3, 2), 0.5)}, "dtype float64, the model expects int64"),
    ({"x": np.array([["a"] * 4] * 3), "ids": np.ones((3, 2), np.int64)}, "dtype"),
    ({"x": [[1, 2], [3]], "ids": np.ones((3, 2), np.int64)}, "rectangular"),
])
def test_bad_inputs_are_named(inputs: dict, msg: str) -> None:
    with pytest.raises(InputError, match=msg):
        check_inputs(inputs, SPECS)


def test_single_input_model_accepts_bare_array() -> None:
    out = check_inputs(np.zeros((2, 4), np.float32), SPECS[:1])
    assert list(out) == ["x"]
    with pytest.raises(InputError, match="2 inputs"):
        check_inputs(np.zeros((2, 4)), SPECS)


def test_wire_round_trip_and_errors() -> None:
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([1, 2], dtype=np.int64)}
    out, header = wire.decode(wire.encode(arrays, op="predict"))
    assert header == {"op": "predict"}
    for k in arrays:
        np.testing.assert_array_equal(out[k], arrays[k])
    msg = wire.encode(arrays)
    with pytest.raises(wire.WireError, match="truncated"):
        wire.decode(msg[:-3])
    with pytest.raises(wire.WireError, match="trailing"):
        wire.decode(msg + b"x")
    with pytest.raises(wire.WireError, match="EFT1"):
        wire.decode(b"nope")


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_values = st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.text(max_size=3),
                    st.lists(st.one_of(st.integers(-300, 300), st.floats(), st.lists(st.integers(), max_size=3)),
                             max_size=5))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["x", "ids", "other"]), _values, max_size=3))
def test_any_garbage_gives_input_error_or_valid_arrays(inputs) -> None:
    try:
        out = check_inputs(inputs, SPECS)
    except InputError:
        return
    assert out["x"].dtype == np.float32 and out["ids"].dtype == np.int64
    assert out["x"].shape[0] == out["ids"].shape[0]


def test_full_integer_tflite_spec_takes_float_batches() -> None:
    """A quantized, fixed-batch-1 input (as the compiler writes for TFLite) accepts float batches:
    the runtime quantizes with the tensor's scale and loops over the batch axis."""
    spec = TensorSpec.from_dict({"name": "x", "shape": [1, 4], "dtype": "int8", "batch_axis": 0,
                                 "quantization": {"scale": 0.1, "zero_point": -128}})
    assert spec.shape == ("batch", 4) and spec.quantized
    out = check_inputs({"x": [[0.5, 1.5, 2.0, 3.25]] * 3}, [spec])["x"]
    assert out.dtype == np.float32 and out.shape == (3, 4)
    # without a scale an int8 input still refuses fractional floats, and a fixed batch stays fixed
    plain = TensorSpec.from_dict({"name": "x", "shape": [1, 4], "dtype": "int8"})
    with pytest.raises(InputError, match="dtype"):
        check_inputs({"x": [[0.5, 1.5, 2.0, 3.25]]}, [plain])
    with pytest.raises(InputError, match="dimension 0 is 3, expected 1"):
        check_inputs({"x": [[1, 2, 3, 4]] * 3}, [plain])
