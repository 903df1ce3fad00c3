"""A bundle with the raw-input contract (issue 15 item 1, T15's scikit-learn pipeline case: imputer +
scaler + one-hot, converted with skl2onnx): the build stores importance over the raw features
(`clinic`, not the three one-hot columns f4..f6), the importance-weighted drift baseline names its
columns after them, and Agent.explain takes raw features by name, like Agent.predict, explains the
row the model actually saw and attributes by raw feature."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compiler"))
from fleet.drift.importance import importance_weights, weighted_share  # noqa: E402
from tests.compiler.test_raw_input_parity import NUMERIC, _agent, tabular, tabular_bundle  # noqa: E402,F401

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from agent.keys import generate_keypair

    return generate_keypair(tmp_path_factory.mktemp("rawkeys"), "build")


def test_explain_takes_raw_features_by_name(tabular, tabular_bundle, keys, tmp_path) -> None:  # noqa: F811
    a = _agent(tmp_path, keys, "raw-explain")
    try:
        a.install(tabular_bundle.bundle_path, allow_new_name=True)
        m = a.predictor.active.manifest
        assert "error" not in m["explain"] and m["explain"]["importance"], m["explain"]
        ev = tabular["eval"]
        row = {k: (None if isinstance(v[0], float) and np.isnan(v[0]) else
                   (float(v[0]) if k != "clinic" else str(v[0]))) for k, v in ev.items()}
        ex = a.explain(row)
        tensor_row = a.predictor.active.features.transform(row)[0]
        direct = a.explain(tensor_row)
    finally:
        a.stop()
    raw = [*NUMERIC, "clinic"]
    assert ex["n_features"] == len(m["explain"]["features"]) == 5 and ex["reference"] == "explain.reference"
    assert ex["feature_kind"] == "raw" and {a["feature"] for a in ex["rows"][0]["attributions"]} == set(raw)
    assert ex["rows"] == direct["rows"]  # raw by name == the transformed tensor
    assert ex["rows"][0]["prediction"] == int(np.argmax(tabular["expected"][0]))  # the training pipeline's answer


def test_importance_and_weighted_drift_name_the_raw_features(tabular_bundle) -> None:  # noqa: F811
    from agent.bundle import read_manifest_unverified

    m = read_manifest_unverified(tabular_bundle.bundle_path)
    ex, base = m["explain"], m["drift_baseline"]
    raw = [*NUMERIC, "clinic"]
    assert ex["feature_kind"] == "raw" and ex["features"] == raw
    assert {r["feature"] for r in ex["importance"]} == set(raw) and ex["groups"] == [0, 1, 2, 3, 4, 4, 4]
    cols = [*NUMERIC, "clinic=bergen", "clinic=oslo", "clinic=tromso"]
    assert ex["columns"] == cols and len(ex["reference"]) == len(cols)
    assert sorted(ex["reference"][4:]) == [0.0, 0.0, 1.0]  # occluding `clinic` sets its most common category
    assert ex.get("slices") is None or all({r["feature"] for r in s["importance"]} == set(raw)
                                           for s in ex["slices"].values())
    # drift features are the model's columns, named after their raw feature; each carries its share
    assert [f["name"] for f in base["features"]] == cols == base["extractor"]["names"]
    weights = importance_weights(base)
    assert weights is not None and set(weights) == set(cols) and abs(sum(weights.values()) - 1) < 1e-3
    by_raw = {r["feature"]: max(0.0, r["importance"]) for r in ex["importance"]}
    total = sum(by_raw.values())
    assert abs(weights["clinic=oslo"] - by_raw["clinic"] / total / 3) < 1e-3
    assert abs(weights["worst area"] - by_raw["worst area"] / total) < 1e-3
    share = weighted_share(["worst area"], cols, weights)
    assert share.weighted and share.share == round(weights["worst area"], 4)
