"""All three runtimes serve a real compiled model and agree with each other."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.runtimes.litert_runtime import dequantize, quantize


@pytest.mark.parametrize("which", ["v1", "openvino_v1", "tflite_v1"])
def test_runtime_serves_real_model(agent_factory, bundles, digits, which) -> None:
    a = agent_factory(f"rt-{which.replace('_', '-')}")
    a.install(bundles[which])
    assert a.predictor.active.runtime.name == {"v1": "onnxruntime", "openvino_v1": "openvino",
                                                "tflite_v1": "litert"}[which]
    x, y = digits
    for batch in (1, 7, 64):  # dynamic batch, including a resize for LiteRT
        out = a.predict(x[:batch])["logits"]
        assert out.shape == (batch, 10) and out.dtype == np.float32
    logits = a.predict(x[:300])["logits"]
    assert (logits.argmax(1) == y[:300]).mean() > 0.85


def test_runtimes_agree(agent_factory, bundles, digits) -> None:
    x = digits[0][:50]
    outs = {}
    for which in ("v1", "openvino_v1", "tflite_v1"):
        a = agent_factory(f"agree-{which.replace('_', '-')}")
        a.install(bundles[which])
        outs[which] = a.predict(x)["logits"]
    np.testing.assert_allclose(outs["openvino_v1"], outs["v1"], atol=1e-4)
    np.testing.assert_allclose(outs["tflite_v1"], outs["v1"], atol=1e-4)


def test_int8_quantize_round_trip() -> None:
    x = np.linspace(-1, 1, 101, dtype=np.float32)
    q = quantize(x, 2 / 255, -1, np.dtype(np.int8))
    assert q.dtype == np.int8 and q.min() >= -128 and q.max() <= 127
    np.testing.assert_allclose(dequantize(q, 2 / 255, -1), x, atol=1 / 255 + 1e-6)
    assert quantize(np.array([100.0]), 0.1, 0, np.dtype(np.int8))[0] == 127  # saturates


def test_missing_backend_names_the_extra(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['openvino'] = None; sys.modules['ai_edge_litert'] = None\n"
            "from agent.runtimes.base import load_runtime, RuntimeOptions, RuntimeUnavailable\n"
            "for fmt in ('openvino', 'tflite'):\n"
            "    try:\n"
            "        load_runtime(fmt, 'x', RuntimeOptions())\n"
            "    except RuntimeUnavailable as e:\n"
            "        print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert "pip install edgefleet[openvino]" in out.stdout
    assert "pip install edgefleet[tflite]" in out.stdout
