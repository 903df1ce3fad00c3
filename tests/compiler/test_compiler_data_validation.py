"""Bad data is refused before any expensive step, with a message that says what to fix."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.data import Dataset, load_dataset, validate_dataset
from compiler.errors import CompileInputError

SPEC = [{"name": "input", "shape": ["batch", 64], "dtype": "float32"}]


def _ds(n: int = 20, **kw) -> Dataset:
    rng = np.random.default_rng(0)
    base = {"inputs": {"input": rng.random((n, 64), dtype=np.float32)}, "labels": rng.integers(0, 10, n),
            "slices": np.array(["a", "b"] * (n // 2))}
    base.update(kw)
    return Dataset(base["inputs"], base["labels"], base["slices"])


def test_valid_data_passes() -> None:
    validate_dataset(_ds(), SPEC, task="classification", n_classes=10, need_labels=True)


@pytest.mark.parametrize("ds, message", [
    (_ds(inputs={"input": np.zeros((20, 63), np.float32)}), "axis 1 is 63, expected 64"),
    (_ds(inputs={"input": np.zeros((20, 8, 8), np.float32)}), "expects rank 2"),
    (_ds(inputs={"input": np.full((20, 64), np.nan, np.float32)}), "NaN or infinite values (first at sample 0)"),
    (_ds(labels=np.arange(20)), "labels range over [0, 19] but the model has 10 classes"),
    (_ds(labels=np.zeros(19, np.int64)), "labels has 19 entries for 20 samples"),
    (_ds(labels=np.full(20, 0.5)), "classification labels must be integers"),
    (_ds(slices=np.array(["a"] * 18 + ["b"] * 2)), "slice(s) too small for a per-slice metric ('b': 2)"),
    (_ds(slices=np.array(["a"] * 19)), "slices must be 1-D with one entry per sample"),
    (_ds(inputs={"other": np.zeros((20, 64), np.float32)}), "no array for model input 'input'"),
    (_ds(inputs={"input": np.array([["x"] * 64] * 20)}), "has dtype <U1"),
])
def test_bad_data_is_refused_with_a_clear_message(ds: Dataset, message: str) -> None:
    with pytest.raises(CompileInputError) as err:
        validate_dataset(ds, SPEC, task="classification", n_classes=10, min_slice_size=5, role="--eval")
    assert message in str(err.value)
    assert "--eval" in str(err.value)


def test_missing_labels_are_refused_when_needed() -> None:
    with pytest.raises(CompileInputError, match="a 'labels' array is needed"):
        validate_dataset(_ds(labels=None), SPEC, task="classification", need_labels=True)


def test_npz_loading_and_errors(tmp_path) -> None:
    good = tmp_path / "d.npz"
    np.savez(good, inputs=np.zeros((4, 64), np.float32), labels=np.arange(4))
    ds = load_dataset(good, ["x"])
    assert list(ds.inputs) == ["x"] and ds.n == 4 and ds.labels is not None
    assert ds.sha256() == load_dataset(good, ["x"]).sha256()
    with pytest.raises(CompileInputError, match="does not exist"):
        load_dataset(tmp_path / "missing.npz", ["x"])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(CompileInputError, match="not a readable .npz"):
        load_dataset(tmp_path / "bad.npz", ["x"])
    np.savez(tmp_path / "nokey.npz", features=np.zeros((4, 64)))
    with pytest.raises(CompileInputError, match="no 'inputs' key"):
        load_dataset(tmp_path / "nokey.npz", ["x"])
    with pytest.raises(CompileInputError, match="cannot import module"):
        load_dataset("no_such_module_xyz:make", ["x"])
