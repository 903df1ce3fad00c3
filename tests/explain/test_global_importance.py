"""Issue 15 item 3: every version says what drives it. A model whose label depends on known
features (sklearn synthetic data, informative columns first): the build's permutation importance
and integrated gradients both rank those features on top, overall and per slice."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from compiler.explain import explain_version, importance_map

pytestmark = pytest.mark.slow
INFORMATIVE = {"f0", "f1", "f2"}


def synthetic(n: int = 1200, n_features: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian features (sklearn's make_regression generator); the label is a known function of
    f0, f1, f2 only, so every other column is noise the model must learn to ignore."""
    from sklearn.datasets import make_regression

    x, _ = make_regression(n_samples=n, n_features=n_features, random_state=0)
    y = (1.5 * x[:, 0] + x[:, 1] - x[:, 2] > 0).astype(np.int64)
    return x.astype(np.float32), y


def train_mlp(x: np.ndarray, y: np.ndarray):  # type: ignore[no-untyped-def]
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model.eval()


def test_sklearn_model_permutation_importance_finds_the_informative_features() -> None:
    from sklearn.ensemble import RandomForestClassifier

    x, y = synthetic()
    clf = RandomForestClassifier(n_estimators=30, random_state=0).fit(x[:800], y[:800])
    slices = np.where(x[800:, 5] > 0, "a", "b")
    ex = explain_version(lambda b: clf.predict_proba(b), x[800:], y[800:], slices, "classification")
    top = [r["feature"] for r in ex["importance"][:3]]
    assert set(top) == INFORMATIVE, ex["importance"]
    assert all(r["std"] >= 0 for r in ex["importance"]) and ex["repeats"] == 3
    noise = importance_map(ex)
    assert max(noise[f"f{i}"] for i in range(3, 10)) < min(noise[f] for f in INFORMATIVE)
    assert set(ex["slices"]) == {"a", "b"}
    for s in ex["slices"].values():
        assert set(r["feature"] for r in s["importance"][:3]) == INFORMATIVE
    # same seed: the same numbers (the manifest must stay byte-reproducible)
    again = explain_version(lambda b: clf.predict_proba(b), x[800:], y[800:], slices, "classification")
    assert again == ex


def test_build_stores_permutation_and_integrated_gradients_in_the_manifest(build, tmp_path) -> None:
    x, y = synthetic()
    model = train_mlp(x[:800], y[:800])
    slices = np.where(x[800:, 5] > 0, "a", "b")
    [res] = build(torch=model, calib={"inputs": x[:64]}, eval={"inputs": x[800:], "labels": y[800:],
                                                                  "slices": slices},
                  device_classes=["x86-64-generic"], name="synth")
    assert res.passed, res.failed_gates
    with tarfile.open(res.bundle_path) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
    ex = manifest["explain"]
    assert "error" not in ex, ex
    assert ex["features"] == [f"f{i}" for i in range(10)] and len(ex["reference"]) == 10
    assert {r["feature"] for r in ex["importance"][:3]} == INFORMATIVE
    assert {r["feature"] for r in ex["integrated_gradients"][:3]} == INFORMATIVE
    assert set(ex["slices"]) == {"a", "b"}
    weights = manifest["drift_baseline"]["importance"]  # what drift reports and rollout gates weight by
    assert sum(weights[f] for f in INFORMATIVE) > 0.9 and sum(weights.values()) <= 1.0 + 1e-6
