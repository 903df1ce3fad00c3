"""Same inputs and seed: byte-identical model files and manifests; the cache skips a rebuild."""

from __future__ import annotations

import json
import tarfile
import time

import pytest
from compiler_zoo import calib_set, eval_set

pytestmark = pytest.mark.slow
CLASSES = ["x86-64-generic", "x86-avx512-vnni", "mcu-class-int8"]


def _manifest(path) -> dict:
    with tarfile.open(path) as tar:
        return json.loads(tar.extractfile("manifest.json").read())


def test_two_builds_are_byte_identical(build, mlp_builds, mlp, digits, tmp_path) -> None:
    """The first build is the session's (conftest.py: same model, data and settings, every class, made
    earlier in this process); the second is made here, for three of its classes."""
    kw = {"torch": mlp, "calib": calib_set(digits), "eval": eval_set(digits), "device_classes": CLASSES,
          "name": "digits-mlp", "version": 3, "latency_iterations": 10}
    first = [next(r for r in mlp_builds if r.device_class == dc) for dc in CLASSES]
    second = build(out=tmp_path / "b", **kw)
    for a, b in zip(first, second, strict=True):
        assert a.passed and b.passed
        assert a.bundle_path.read_bytes() == b.bundle_path.read_bytes(), a.device_class
        ma = _manifest(a.bundle_path)
        prov = ma["provenance"]
        assert set(prov["inputs"]) >= {"model", "calib", "eval"}
        assert prov["code_version"].startswith("compiler-")
        assert {"torch", "onnxruntime", "openvino", "nncf", "litert-torch"} <= set(prov["tools"])
        assert prov["hyperparameters"]["seed"] == 0 and prov["cache_key"] == a.cache_key


def test_cache_skips_rebuild_and_changes_with_inputs(build, mlp, digits, tmp_path) -> None:
    kw = {"torch": mlp, "calib": calib_set(digits), "eval": eval_set(digits),
          "device_classes": ["x86-64-generic"], "cache_dir": tmp_path / "cache"}
    [cold] = build(out=tmp_path / "a", **kw)
    t0 = time.perf_counter()
    [warm] = build(out=tmp_path / "b", **kw)
    warm_s = time.perf_counter() - t0
    assert not cold.cached and warm.cached and warm.passed
    assert warm.bundle_path == tmp_path / "b" / cold.bundle_path.name
    assert warm.bundle_path.read_bytes() == cold.bundle_path.read_bytes()
    assert warm.metrics == cold.metrics and warm_s < 5
    [other] = build(out=tmp_path / "c", **{**kw, "calib": calib_set(digits, n=32)})
    assert not other.cached and other.cache_key != cold.cache_key
