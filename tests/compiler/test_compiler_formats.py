"""End to end, per format: the compiled artifact runs in its own runtime, within budget, signed.

The bundle is verified and unpacked like the agent does, then the entrypoint is run from the
unpacked folder and must reproduce the metrics recorded in the manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from compiler_zoo import calib_set, eval_set

from agent.bundle import verify_bundle
from agent.device_classes import cpu_flags, get_device_class
from agent.keys import Keyring
from compiler.config import CompileConfig
from compiler.evaluate import quality
from compiler.pipeline import BuildResult, compile_model
from compiler.runtimes import open_runner, predict

pytestmark = pytest.mark.slow
ALL_CLASSES = ["x86-64-generic", "x86-avx512-vnni", "arm64-cortex-a", "mcu-class-int8", "nvidia-jetson"]


def _compile(model: Any, digits: dict, kind: str, classes: list[str], keys: tuple[Path, Path], out: Path,
             task: str = "classification", **budgets: Any) -> list[BuildResult]:
    ev = eval_set(digits, kind, labels=task == "classification")
    return compile_model(CompileConfig(torch=model, calib=calib_set(digits, kind), eval=ev, device_classes=classes,
                                       task=task, signing_key=keys[0], out=out, progress=False,
                                       latency_iterations=10, name=f"digits-{kind}", version=3, **budgets))


# mlp_builds (the MLP for every class, name digits-mlp, version 3) is a session fixture in conftest.py:
# the serving and reproducibility tests check the same build.


@pytest.fixture(scope="module")
def cnn_builds(cnn, digits, keys, tmp_path_factory) -> list[BuildResult]:
    return _compile(cnn, digits, "cnn", ["x86-64-generic", "x86-avx512-vnni", "arm64-cortex-a"], keys,
                    tmp_path_factory.mktemp("cnn"))


@pytest.fixture(scope="module")
def encoder_builds(encoder, digits, keys, tmp_path_factory) -> list[BuildResult]:
    return _compile(encoder, digits, "transformer", ["x86-64-generic", "x86-avx512-vnni", "arm64-cortex-a"], keys,
                    tmp_path_factory.mktemp("enc"), task="embedding",
                    # Full-integer LiteRT of this 1-layer digits encoder: worst digit at cosine 0.964.
                    min_cosine=0.95, min_p1_cosine=0.97)


def _check(result: BuildResult, keys: tuple[Path, Path], digits: dict, kind: str, tmp_path: Path,
           reference: np.ndarray, task: str = "classification") -> dict[str, Any]:
    dc = get_device_class(result.device_class)
    assert result.passed, result.to_dict()
    assert result.format == dc.format and result.precision == dc.precision
    assert result.bundle_path is not None and result.bundle_path.is_file()
    vb = verify_bundle(result.bundle_path, Keyring.from_files([keys[1]]), unpack_to=tmp_path / result.device_class)
    m = vb.manifest
    assert m["model"] == {"name": f"digits-{kind}", "version": 3, "device_class": dc.name, "format": dc.format,
                          "precision": dc.precision}
    # The artifact runs in its own runtime from the unpacked bundle and reproduces the manifest metrics.
    ev = eval_set(digits, kind, labels=task == "classification")
    runner = open_runner(dc.format, vb.path / m["entrypoint"])
    outputs = predict(runner, {m["inputs"][0]["name"]: ev["inputs"]})
    q = quality(task, outputs, reference, ev.get("labels"), ev["slices"])
    assert q.metric == pytest.approx(m["metrics"]["metric"], abs=1e-6)
    # The agent's own runtime serves it the way apps call it: float inputs, a batch of 8, even where
    # the artifact is full-integer with a fixed batch of 1 (TFLite), and answers as the compiler measured.
    served = _serve_with_agent(m, vb.path, ev["inputs"][:8])
    np.testing.assert_allclose(served, np.asarray(outputs)[:8], rtol=1e-4, atol=1e-4)
    assert m["metrics"]["drop"] <= dc.max_accuracy_drop
    assert m["metrics"]["slice_gap_increase"] <= dc.max_slice_gap_increase
    assert m["metrics"]["size_bytes"] <= dc.max_model_bytes
    assert result.latency["p99_ms"] <= dc.latency_budget_ms
    # Budgets and gates are recorded; latency (machine-dependent) is not in the signed manifest.
    worst_case = {"embedding": {"min-cosine", "min-p1-cosine"}, "regression": {"max-p99-error"}}.get(task, set())
    assert set(m["metrics"]["gates"]) == {"max-accuracy-drop", "max-slice-gap-increase", "max-size-mb", *worst_case}
    assert "latency" not in m["metrics"]
    # Specs the agent validates requests against.
    spec = m["inputs"][0]
    per_sample = list(ev["inputs"].shape[1:])
    if dc.format == "tflite":
        assert spec["shape"] == [1, *per_sample]
        # The source model's interface (float in); the int8 tensor and its quantization are bound
        # in runtime_config.tflite, which the agent applies (issue 13 item 6).
        assert spec["dtype"] == "float32" and spec["name"] == "input"
        binding = m["runtime_config"]["tflite"]["inputs"][0]
        assert binding["dtype"] == "int8" and binding["quantization"]["scale"] > 0
    else:
        assert spec["shape"] == ["batch", *per_sample] and spec["dtype"] == "float32"
    # Drift baseline on the manifest's input name, counts from the evaluation set.
    db = m["drift_baseline"]
    assert db["extractor"]["input"] == spec["name"] and db["n_samples"] == len(ev["inputs"])
    assert sum(db["prediction"]["counts"]) == len(ev["inputs"])
    passes = [p["pass"] for p in m["provenance"]["lineage"]]
    assert passes[0] == "export" and passes[-1] == "evaluate"
    return m


def _serve_with_agent(manifest: dict[str, Any], root: Path, x: np.ndarray) -> np.ndarray:
    from agent.runtimes.base import RuntimeOptions, load_runtime
    from agent.spec_check import check_inputs, specs_from_manifest

    rt = load_runtime(manifest["model"]["format"], root / manifest["entrypoint"], RuntimeOptions(), manifest)
    try:
        return rt.run(check_inputs(x.astype(np.float32), specs_from_manifest(manifest)))[0]
    finally:
        rt.close()


def _torch_reference(model: Any, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("device_class", ALL_CLASSES)
def test_mlp_every_device_class(mlp_builds, device_class, mlp, digits, keys, tmp_path) -> None:
    result = next(r for r in mlp_builds if r.device_class == device_class)
    ref = _torch_reference(mlp, digits["x_test"])
    m = _check(result, keys, digits, "mlp", tmp_path, ref)
    assert m["metrics"]["metric"] > 0.9
    if device_class == "x86-avx512-vnni":
        assert {f["path"] for f in m["files"]} == {"model.xml", "model.bin"}
        assert m["runtime_config"]["openvino"]["INFERENCE_PRECISION_HINT"] == "f32"
    if device_class == "mcu-class-int8":
        assert result.size_bytes < 1 << 20


@pytest.mark.parametrize("device_class", ["x86-64-generic", "x86-avx512-vnni", "arm64-cortex-a"])
def test_cnn(cnn_builds, device_class, cnn, digits, keys, tmp_path) -> None:
    result = next(r for r in cnn_builds if r.device_class == device_class)
    m = _check(result, keys, digits, "cnn", tmp_path, _torch_reference(cnn, zoo_x(digits, "cnn")))
    assert m["drift_baseline"]["extractor"]["reduce_axes"] == [1, 2]


@pytest.mark.parametrize("device_class", ["x86-64-generic", "x86-avx512-vnni", "arm64-cortex-a"])
def test_transformer_embedding(encoder_builds, device_class, encoder, digits, keys, tmp_path) -> None:
    result = next(r for r in encoder_builds if r.device_class == device_class)
    if device_class == "x86-avx512-vnni" and "avx512_vnni" not in cpu_flags():
        # OpenVINO's INT8 kernels without VNNI saturate: on this host the encoder's worst cosine reads
        # below the budget (-0.71 at batch 64, 0.73 below it), so the build refuses honestly, naming
        # the worst-case gates and that speed was not measured on target; on a VNNI host it passes.
        assert not result.passed and {"min-cosine", "min-p1-cosine"} & set(result.failed_gates), result.to_dict()
        assert "lacks CPU features" in result.latency["note"] and result.bundle_path is None
        return
    m = _check(result, keys, digits, "transformer", tmp_path,
               _torch_reference(encoder, zoo_x(digits, "transformer")), task="embedding")
    assert m["metrics"]["metric_name"] == "cosine" and m["metrics"]["metric"] > 0.99
    assert m["drift_baseline"]["extractor"]["reduce_axes"] == [0]
    assert m["drift_baseline"]["prediction"]["kind"] == "value"


def zoo_x(digits: dict, kind: str) -> np.ndarray:
    import compiler_zoo

    return compiler_zoo.reshape_for(kind, digits["x_test"])


def test_regression_task(digits, keys, tmp_path) -> None:
    """A regressor (digit value as a number): R^2 metric, value drift baseline, ONNX INT8 within budget."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1))
    x, y = torch.from_numpy(digits["x_train"]), torch.from_numpy(digits["y_train"].astype(np.float32))[:, None]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    ev = {"inputs": digits["x_test"], "labels": digits["y_test"].astype(np.float32)[:, None],
          "slices": digits["s_test"]}
    [res] = compile_model(CompileConfig(torch=model.eval(), eval=ev, device_classes=["x86-64-generic"],
                                        task="regression", signing_key=keys[0], out=tmp_path, progress=False,
                                        latency_iterations=5, max_accuracy_drop=0.05, max_slice_gap_increase=0.05))
    assert res.passed, res.to_dict()
    assert res.metrics["metric_name"] == "r2" and res.metrics["reference_metric"] > 0.5
    vb = verify_bundle(res.bundle_path, Keyring.from_files([keys[1]]))
    assert vb.manifest["drift_baseline"]["prediction"]["kind"] == "value"
    # The class's 7-bit weights (AVX2 U8S8 saturates at full range: p99 error 0.35 without) are in the lineage.
    quantize = [p for p in vb.manifest["provenance"]["lineage"] if p["pass"] == "quantize"]
    assert quantize and all(p["config"]["reduce_range"] is True for p in quantize)


@pytest.mark.parametrize("device_class", ALL_CLASSES)
def test_agent_runtimes_run_the_bundles(mlp_builds, device_class, mlp, digits, keys, tmp_path) -> None:
    """The contract with the agent: its own runtime loader runs our bundles on float inputs and agrees."""
    from agent.runtimes.base import RuntimeOptions, load_runtime

    result = next(r for r in mlp_builds if r.device_class == device_class)
    vb = verify_bundle(result.bundle_path, Keyring.from_files([keys[1]]), unpack_to=tmp_path / "b")
    m = vb.manifest
    runtime = load_runtime(m["model"]["format"], vb.path / m["entrypoint"], RuntimeOptions(), m)
    name = m["inputs"][0]["name"]
    x = digits["x_test"][:40]
    batch = 1 if m["model"]["format"] == "tflite" else len(x)
    outs = np.concatenate([runtime.run({name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])
    ours = predict(open_runner(m["model"]["format"], vb.path / m["entrypoint"]), {name: x})
    assert np.mean(outs.argmax(-1) == ours.argmax(-1)) == 1.0
    np.testing.assert_allclose(outs, ours, atol=1e-3)
