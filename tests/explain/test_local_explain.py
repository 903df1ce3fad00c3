"""Issue 15 item 4: local explanations through a real agent's own runtime (ONNX Runtime here):
a crafted input whose prediction hinges on one feature gets that feature as the top attribution;
the local server answers the same over HTTP, with the latency it cost and no raw input."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.agent.conftest import free_port
from tests.explain.tabular import tabular_bundle


@pytest.fixture()
def tabular(tmp_path: Path, fleet_keys: dict[str, Path]) -> Path:
    return tabular_bundle(tmp_path / "tab-v1.bundle", fleet_keys["build"],
                          names=[f"sensor_{i}" for i in range(32)])[0]


def test_agent_explain_names_the_dominant_feature(agent_factory, tabular, tmp_path) -> None:
    port = free_port()
    sock = str(tmp_path / "agent.sock")
    agent = agent_factory(http_port=port, unix_socket=sock)
    agent.install(tabular)
    x = np.zeros((1, 32), dtype=np.float32)
    x[0, 7] = 2.0
    x[0, 3] = 1.0
    ex = agent.explain({"x": x})
    row = ex["rows"][0]
    assert row["prediction"] == 1 and ex["method"] == "occlusion" and ex["reference"] == "explain.reference"
    assert row["attributions"][0]["feature"] == "sensor_7"
    assert row["attributions"][0]["attribution"] == pytest.approx(4.0 * (2.0 - ex_ref7(agent)), abs=1e-3)
    assert ex["evaluations"] == 33 and ex["latency_ms"] > 0
    # the local server: same answer, top_k honoured, no raw inputs echoed
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/explain", method="POST",
                                 data=json.dumps({"inputs": {"x": x.tolist()}, "top_k": 3}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        doc = json.loads(resp.read())
    assert [a["feature"] for a in doc["rows"][0]["attributions"]][:1] == ["sensor_7"]
    assert len(doc["rows"][0]["attributions"]) == 3 and "inputs" not in doc
    # the Unix socket (EFT1 frame with {"op": "explain"}): the same attributions
    from agent.local_server import LocalClient

    client = LocalClient(sock)
    try:
        over_socket = client.explain({"x": x}, top_k=3)
    finally:
        client.close()
    assert over_socket["rows"] == doc["rows"]
    bad = urllib.request.Request(f"http://127.0.0.1:{port}/v1/explain", method="POST",
                                 data=b'{"inputs": {"x": [[1, 2]]}}', headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(bad, timeout=10)
    assert err.value.code == 400


@pytest.mark.slow  # the session bundles (ONNX, OpenVINO, TFLite) take ~10 s to build
def test_digits_explain_uses_the_drift_baseline_without_an_explain_section(agent_factory, bundles, digits) -> None:
    agent = agent_factory()
    agent.install(bundles["v1"])  # built without `explain`: medians come from the drift baseline
    x, _ = digits
    ex = agent.explain({"x": x[:2]})
    assert ex["reference"] == "drift_baseline" and ex["n_features"] == 64 and len(ex["rows"]) == 2
    pred = agent.predict({"x": x[:2]})["logits"].argmax(axis=1)
    assert [r["prediction"] for r in ex["rows"]] == pred.tolist()


def ex_ref7(agent) -> float:  # type: ignore[no-untyped-def]
    """The reference (eval median) the device occluded sensor_7 with."""
    return float(agent.predictor.active.manifest["explain"]["reference"][7])
