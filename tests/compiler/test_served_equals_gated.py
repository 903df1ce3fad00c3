"""What the agent serves is what was gated (issue 13, items 5 and 6).

A model is compiled for every format; the gate's own outputs on the eval inputs are recorded as
the compiler computes them; each bundle is installed in a real in-process agent, which must answer
the eval inputs with those outputs (the same runtime config: bitwise, or within 1e-6). The TFLite
bundle keeps the source model's interface, so one request dict, int64 token ids included, works
unchanged against the ONNX and the TFLite bundle of the same model.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from compiler_zoo import calib_set, eval_set

from agent.bundle import verify_bundle
from agent.config import AgentConfig
from agent.daemon import Agent
from agent.keys import Keyring
from agent.spec_check import InputError
from compiler import candidates
from compiler.config import CompileConfig
from compiler.pipeline import compile_model

pytestmark = pytest.mark.slow
VOCAB, SEQ, N = 1000, 12, 96


class TokenClassifier:
    """Token ids (int64) -> mean embedding -> 5 classes: an integer-input model."""

    def __new__(cls) -> Any:
        import torch

        class Model(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                torch.manual_seed(0)
                self.emb = torch.nn.Embedding(VOCAB, 16)
                self.head = torch.nn.Linear(16, 5)

            def forward(self, ids: torch.Tensor) -> torch.Tensor:
                return self.head(torch.relu(self.emb(ids).mean(dim=1)))

        return Model().eval()


@pytest.fixture(scope="module")
def gated(monkeypatch_module: pytest.MonkeyPatch) -> dict[tuple[str, str], list[np.ndarray]]:
    """Every candidate's eval-set outputs, as the gate computed them, by (format, precision)."""
    seen: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    original = candidates.Evaluator.__call__

    def spy(self: Any, art: Any, ctx: Any) -> Any:
        res = original(self, art, ctx)
        if res.outputs is not None:
            seen[(art.fmt, art.precision)].append(np.array(res.outputs))
        return res

    monkeypatch_module.setattr(candidates.Evaluator, "__call__", spy)
    return seen


@pytest.fixture(scope="module")
def monkeypatch_module() -> Any:
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _compile(keys: tuple[Path, Path], out: Path, **kw: Any) -> list[Any]:
    results = compile_model(CompileConfig(signing_key=keys[0], out=out, progress=False, latency_iterations=5,
                                          accuracy_control=False, **kw))
    for r in results:
        assert r.passed, r.to_dict()
    return results


def _agent(tmp: Path, keys: tuple[Path, Path], device_class: str, name: str) -> Agent:
    cfg = AgentConfig(device_id=name, state_dir=str(tmp / name), build_keys=[str(keys[1])],
                      device_class=device_class)
    return Agent(cfg).start()


@pytest.fixture(scope="module")
def digit_builds(mlp_builds, mlp, digits, keys, tmp_path_factory, gated) -> list[Any]:
    out = tmp_path_factory.mktemp("served")
    common = {"torch": mlp, "calib": calib_set(digits), "eval": eval_set(digits), "name": "digits", "version": 1}
    # Each class's own format at INT8 (ONNX QDQ, OpenVINO+NNCF, full-integer TFLite): the session's build of
    # this model (conftest.py, its gate outputs in mlp_builds.gated); ONNX FP32 and OpenVINO FP16 built here.
    int8 = [r for r in mlp_builds if r.device_class in ("x86-64-generic", "x86-avx512-vnni", "arm64-cortex-a")]
    for r in int8:
        assert r.passed and r.precision == "int8", r.to_dict()
    return (int8
            + _compile(keys, out / "fp32", device_classes=["x86-64-generic"], precision="fp32", **common)
            + _compile(keys, out / "fp16", device_classes=["x86-avx512-vnni"], precision="fp16", **common))


def _gate_outputs(r: Any, mlp_builds: Any, gated: dict[tuple[str, str], list[np.ndarray]]) -> np.ndarray:
    """The outputs the gate computed for the chosen candidate of this build."""
    if r.precision == "int8":
        return mlp_builds.gated[r.device_class][-1]
    return gated[(r.format, r.precision)][-1]


def test_agent_serves_the_gated_outputs_for_every_format(digit_builds, mlp_builds, gated, digits, keys,
                                                         tmp_path) -> None:
    x = eval_set(digits)["inputs"]
    checked = set()
    for i, r in enumerate(digit_builds):
        a = _agent(tmp_path, keys, r.device_class, f"served-{i}")
        try:
            a.install(r.bundle_path, allow_new_name=True)
            m = a.predictor.active.manifest
            assert m["runtime_config"]["threads"] >= 1
            served = np.concatenate([a.predict({"input": x[j:j + 64]})[m["outputs"][0]["name"]]
                                     for j in range(0, len(x), 64)])
            if r.format == "openvino":  # served by static-shape variants, as the gate ran
                assert m["runtime_config"]["shape_cache"] == 4
                assert a.predictor.active.runtime.static.variants
        finally:
            a.stop()
        gate = _gate_outputs(r, mlp_builds, gated)
        assert served.shape == gate.shape
        np.testing.assert_allclose(served, gate, rtol=0, atol=1e-6, err_msg=f"{r.format} {r.precision}")
        checked.add((r.format, r.precision))
    assert checked == {("onnx", "int8"), ("openvino", "int8"), ("tflite", "int8"), ("onnx", "fp32"),
                       ("openvino", "fp16")}


def test_openvino_fp16_is_served_in_the_gated_f32_precision(digit_builds, keys, tmp_path) -> None:
    """Seen 4: the manifest's f32 hint was ignored for FP16 IRs (bf16 on AVX512-BF16 CPUs)."""
    r = next(r for r in digit_builds if r.format == "openvino" and r.precision == "fp16")
    a = _agent(tmp_path, keys, r.device_class, "ov-fp16")
    try:
        a.install(r.bundle_path, allow_new_name=True)
        m = a.predictor.active.manifest
        assert m["model"]["precision"] == "fp16"
        assert m["runtime_config"]["openvino"]["INFERENCE_PRECISION_HINT"] == "f32"
        compiled = a.predictor.active.runtime.compiled
        assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) in ("f32", "<Type: 'float32'>")
    finally:
        a.stop()


def test_tflite_bundle_keeps_the_source_interface(digit_builds, keys, tmp_path) -> None:
    """Seen 5: TFLite inputs were renamed serving_default_args_N and retyped int8."""
    onnx_b = next(r for r in digit_builds if r.format == "onnx" and r.precision == "int8")
    tfl_b = next(r for r in digit_builds if r.format == "tflite")
    specs = {}
    for r in (onnx_b, tfl_b):
        m = verify_bundle(r.bundle_path, Keyring.from_files([keys[1]])).manifest
        specs[r.format] = [(s["name"], s["dtype"]) for s in m["inputs"]], [(s["name"], s["dtype"]) for s in m["outputs"]]
        if r.format == "tflite":
            binding = m["runtime_config"]["tflite"]["inputs"][0]
            assert binding["tensor"].startswith("serving_default") and binding["dtype"] == "int8"
    assert specs["tflite"] == specs["onnx"] == ([("input", "float32")], [(specs["onnx"][1][0][0], "float32")])


# --- integer inputs --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_builds(keys, tmp_path_factory, gated) -> tuple[list[Any], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, size=(N, SEQ)).astype(np.int64)
    import torch

    model = TokenClassifier()
    with torch.no_grad():
        labels = model(torch.from_numpy(ids)).argmax(1).numpy()
    data = {"ids": ids, "labels": labels}
    out = tmp_path_factory.mktemp("tokens")
    return _compile(keys, out, torch=model, calib=data, eval=data, device_classes=["x86-64-generic", "arm64-cortex-a"],
                    name="tokens", version=1, max_accuracy_drop=0.2, min_slice_size=1), data


def test_one_int64_request_works_on_onnx_and_full_integer_tflite(token_builds, gated, keys, tmp_path) -> None:
    builds, data = token_builds
    request = {"ids": data["ids"][:16]}  # int64, as an app on x86 sends it
    answers = {}
    for r in builds:
        m = verify_bundle(r.bundle_path, Keyring.from_files([keys[1]])).manifest
        assert [(s["name"], s["dtype"]) for s in m["inputs"]] == [("ids", "int64")]
        a = _agent(tmp_path, keys, r.device_class, f"tok-{r.format}")
        try:
            a.install(r.bundle_path, allow_new_name=True)
            answers[r.format] = next(iter(a.predict(dict(request)).values()))
            np.testing.assert_allclose(answers[r.format], gated[(r.format, r.precision)][-1][:16], rtol=0, atol=1e-6)
            if r.format == "tflite":
                assert m["model"]["precision"] == "int8"
                assert m["runtime_config"]["tflite"]["inputs"][0]["dtype"] == "int32"
                # An id the int32 tensor cannot hold is refused as bad input, never wrapped around.
                with pytest.raises(InputError, match="int32"):
                    a.predict({"ids": np.full((1, SEQ), 2**40, np.int64)})
                assert a.predictor.active.runtime_errors == 0
        finally:
            a.stop()
    assert set(answers) == {"onnx", "tflite"}
    assert (answers["onnx"].argmax(1) == answers["tflite"].argmax(1)).mean() >= 0.8
