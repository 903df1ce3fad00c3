"""The demo's models: a real digits classifier (v1) and a v2 with a training-serving skew.

v2 is trained and validated on pixels scaled to [-1, 1], so it passes every compile gate; the
devices keep sending raw pixels (0..16), so in the field its inputs and predictions drift. The
rollout's drift gate must catch that at the canary wave.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

V2_INPUT_SCALE = 1.0 / 8.0
V2_INPUT_SHIFT = -1.0


@dataclass(frozen=True)
class DigitsData:
    train_x: np.ndarray
    train_y: np.ndarray
    eval_x: np.ndarray
    eval_y: np.ndarray
    eval_slices: np.ndarray
    traffic_x: np.ndarray  # what the devices see in the field: raw pixels
    traffic_y: np.ndarray  # the true digits, which the apps learn later (fed back as outcomes)


def ink_slices(x: np.ndarray) -> np.ndarray:
    """Light, medium and heavy writers by total ink: a real property to check fairness on."""
    ink = x.sum(axis=1)
    lo, hi = np.quantile(ink, [1 / 3, 2 / 3])
    return np.where(ink < lo, "light", np.where(ink < hi, "medium", "heavy"))


def load_digits_data(seed: int = 0) -> DigitsData:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    y = y.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_train, n_eval = 1100, 400
    ex, ey = x[n_train:n_train + n_eval], y[n_train:n_train + n_eval]
    return DigitsData(x[:n_train], y[:n_train], ex, ey, ink_slices(ex), x[n_train + n_eval:], y[n_train + n_eval:])


def train_classifier(x: np.ndarray, y: np.ndarray, *, seed: int = 0, epochs: int = 60, hidden: int = 128):
    """A small MLP (64-128-64-10) trained with Adam; deterministic for a seed."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, 64), nn.ReLU(),
                          nn.Linear(64, int(y.max()) + 1))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    import torch

    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def write_npz(path: Path, x: np.ndarray, y: np.ndarray, slices: np.ndarray | None = None) -> Path:
    """The compiler's data format: inputs, labels and an optional slice column."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"input": x.astype(np.float32), "labels": y.astype(np.int64)}
    if slices is not None:
        arrays["slices"] = slices.astype(str)
    np.savez(path, **arrays)
    return path


def v2_preprocess(x: np.ndarray) -> np.ndarray:
    """What v2's training pipeline did to pixels, and what the devices never do."""
    return (x * V2_INPUT_SCALE + V2_INPUT_SHIFT).astype(np.float32)


# Entry points for `edgefleet compile` (docs/deploy.md ships this model): module:function sources.
def digits_model():  # type: ignore[no-untyped-def]
    """`--torch edgefleet.demo_model:digits_model`: the demo's v1 digits classifier, trained here."""
    d = load_digits_data()
    return train_classifier(d.train_x, d.train_y, seed=1, epochs=20)  # ~0.97 accuracy, quick to train


def digits_calib() -> dict[str, np.ndarray]:
    """`--calib edgefleet.demo_model:digits_calib`: training images to calibrate INT8 ranges."""
    d = load_digits_data()
    return {"input": d.train_x[:256], "labels": d.train_y[:256]}


def digits_eval() -> dict[str, np.ndarray]:
    """`--eval edgefleet.demo_model:digits_eval`: held-out images, labels and ink slices."""
    d = load_digits_data()
    return {"input": d.eval_x, "labels": d.eval_y, "slices": d.eval_slices.astype(str)}


# The raw-input contract (issue 15): what v2's team declares the devices run, and what training ran.
def pixels_as_sent():  # type: ignore[no-untyped-def]
    """The serving-side pipeline v2 ships: devices send raw pixels, nothing rescales them."""
    import torch

    return torch.nn.Identity()


def v2_training_transform(cols: dict[str, np.ndarray]) -> np.ndarray:
    """The parity gate's reference: v2's training code, raw `pixels` -> model input."""
    return v2_preprocess(np.asarray(cols["pixels"], dtype=np.float32))
