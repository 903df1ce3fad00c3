"""Issue 15 item 4: local explanations through a real agent's own runtime (ONNX Runtime here):
a crafted input whose prediction hinges on one feature gets that feature as the top attribution;
the local server answers the same over HTTP, with the latency it cost and no raw input."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from agent.bundle import build_bundle
from agent.keys import load_private_key
from tests.agent import models
from tests.agent.conftest import free_port


def one_feature_model(path: Path, n: int = 32, hot: int = 7) -> Path:
    """logits = [0, 4 * x[hot] + 0.01 * sum(x)]: feature `hot` decides the class."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.full((n, 2), 0.0, dtype=np.float32)
    w[:, 1] = 0.01
    w[hot, 1] = 4.0
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])], "onefeat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def tabular_bundle(tmp_path: Path, fleet_keys: dict[str, Path]) -> Path:
    from agent.sketches import build_drift_baseline

    x = np.random.default_rng(0).normal(size=(300, 32)).astype(np.float32)
    onnx_path = one_feature_model(tmp_path / "m" / "model.onnx")
    fields = models.manifest_fields(1, "onnx", "model.onnx", build_drift_baseline(x, (x[:, 7] > 0).astype(int),
                                                                              input_name="x", n_classes=2))
    fields["model"]["name"] = "tab"
    fields["inputs"] = [{"name": "x", "dtype": "float32", "shape": ["batch", 32]}]
    fields["outputs"] = [{"name": "logits", "dtype": "float32", "shape": ["batch", 2]}]
    fields["explain"] = {"version": 1, "features": [f"sensor_{i}" for i in range(32)],
                         "reference": [0.0] * 32, "importance": []}
    out = tmp_path / "tab-v1.bundle"
    build_bundle(out, {"model.onnx": onnx_path}, fields, load_private_key(fleet_keys["build"]))
    return out


def test_agent_explain_names_the_dominant_feature(agent_factory, tabular_bundle) -> None:
    port = free_port()
    agent = agent_factory(http_port=port)
    agent.install(tabular_bundle)
    x = np.zeros((1, 32), dtype=np.float32)
    x[0, 7] = 2.0
    x[0, 3] = 1.0
    ex = agent.explain({"x": x})
    row = ex["rows"][0]
    assert row["prediction"] == 1 and ex["method"] == "occlusion" and ex["reference"] == "explain.reference"
    assert row["attributions"][0]["feature"] == "sensor_7"
    assert row["attributions"][0]["attribution"] == pytest.approx(8.0, abs=1e-3)
    assert ex["evaluations"] == 33 and ex["latency_ms"] > 0
    # the local server: same answer, top_k honoured, no raw inputs echoed
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/explain", method="POST",
                                 data=json.dumps({"inputs": {"x": x.tolist()}, "top_k": 3}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        doc = json.loads(resp.read())
    assert [a["feature"] for a in doc["rows"][0]["attributions"]][:1] == ["sensor_7"]
    assert len(doc["rows"][0]["attributions"]) == 3 and "inputs" not in doc
    bad = urllib.request.Request(f"http://127.0.0.1:{port}/v1/explain", method="POST",
                                 data=b'{"inputs": {"x": [[1, 2]]}}', headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(bad, timeout=10)
    assert err.value.code == 400


def test_digits_explain_uses_the_drift_baseline_without_an_explain_section(agent_factory, bundles, digits) -> None:
    agent = agent_factory()
    agent.install(bundles["v1"])  # built without `explain`: medians come from the drift baseline
    x, _ = digits
    ex = agent.explain({"x": x[:2]})
    assert ex["reference"] == "drift_baseline" and ex["n_features"] == 64 and len(ex["rows"]) == 2
    pred = agent.predict({"x": x[:2]})["logits"].argmax(axis=1)
    assert [r["prediction"] for r in ex["rows"]] == pred.tolist()
