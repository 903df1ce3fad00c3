"""Small real models trained on scikit-learn's digits, shared by the compiler tests and benchmark."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def digits_split(seed: int = 0) -> dict[str, np.ndarray]:
    """Digits (8x8, 10 classes) scaled to [0, 1], with a 'slice' column (even/odd sample id)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(y))
    x, y = x[idx], y[idx]
    slices = np.where(np.arange(len(y)) % 3 == 0, "region-a", "region-b")
    n_train = 1200
    return {"x_train": x[:n_train], "y_train": y[:n_train], "x_test": x[n_train:], "y_test": y[n_train:],
            "s_test": slices[n_train:]}


class MLP(nn.Module):
    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TinyEncoder(nn.Module):
    """Rows of the 8x8 digit as a sequence of 8 tokens of 8 features; mean-pooled embedding output."""

    def __init__(self, d_model: int = 32, layers: int = 1, heads: int = 4, out_dim: int = 10) -> None:
        super().__init__()
        self.proj = nn.Linear(8, d_model)
        self.pos = nn.Parameter(torch.zeros(1, 8, d_model))
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=2 * d_model, dropout=0.0,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.proj(x) + self.pos)
        return self.head(h.mean(dim=1))


def seeded(factory, seed: int = 0) -> nn.Module:  # type: ignore[no-untyped-def]
    """Build a model from a fixed seed, so every test session trains the same weights."""
    torch.manual_seed(seed)
    return factory()


def make_student() -> nn.Module:
    """A student 4x smaller than the MLP teacher."""
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 20, seed: int = 0, lr: float = 3e-3) -> nn.Module:
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(yt), generator=gen)
        for i in range(0, len(yt), 64):
            idx = order[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def reshape_for(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "cnn":
        return x.reshape(-1, 1, 8, 8)
    if kind == "transformer":
        return x.reshape(-1, 8, 8)
    return x


def digits_eval() -> dict[str, np.ndarray]:
    """A data callable (`--eval compiler_zoo:digits_eval`)."""
    d = digits_split()
    return {"inputs": d["x_test"], "labels": d["y_test"], "slices": d["s_test"]}


def eval_set(digits: dict[str, np.ndarray], kind: str = "mlp", labels: bool = True) -> dict[str, np.ndarray]:
    out = {"inputs": reshape_for(kind, digits["x_test"]), "slices": digits["s_test"]}
    if labels:
        out["labels"] = digits["y_test"]
    return out


def calib_set(digits: dict[str, np.ndarray], kind: str = "mlp", n: int = 64) -> dict[str, np.ndarray]:
    return {"inputs": reshape_for(kind, digits["x_train"][:n]), "labels": digits["y_train"][:n]}
