"""A bundle with the raw-input contract (issue 15 item 1, T15's scikit-learn pipeline case): the build
stores importance over the model's input columns, and Agent.explain takes raw features by name,
like Agent.predict, and explains the row the model actually saw."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compiler"))
from tests.compiler.test_raw_input_parity import _agent, tabular, tabular_bundle  # noqa: E402,F401

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
    assert ex["n_features"] == len(m["explain"]["features"]) and ex["reference"] == "explain.reference"
    assert ex["rows"] == direct["rows"]  # raw by name == the transformed tensor
    assert ex["rows"][0]["prediction"] == int(np.argmax(tabular["expected"][0]))  # the training pipeline's answer
