"""Session fixtures: real tiny models trained once on digits, data files, a signing key, a build helper."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import compiler_zoo as zoo  # noqa: E402
from compiler_zoo import calib_set, eval_set  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    """Two shared cores: keep torch from oversubscribing them."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> dict[str, np.ndarray]:
    return zoo.digits_split()


@pytest.fixture(scope="session")
def mlp(digits: dict[str, np.ndarray]) -> Any:
    return zoo.train(zoo.seeded(zoo.MLP), digits["x_train"], digits["y_train"], epochs=20)


@pytest.fixture(scope="session")
def cnn(digits: dict[str, np.ndarray]) -> Any:
    return zoo.train(zoo.seeded(zoo.SmallCNN), zoo.reshape_for("cnn", digits["x_train"]), digits["y_train"], epochs=8)


@pytest.fixture(scope="session")
def encoder(digits: dict[str, np.ndarray]) -> Any:
    return zoo.train(zoo.seeded(zoo.TinyEncoder), zoo.reshape_for("transformer", digits["x_train"]), digits["y_train"],
                     epochs=8)


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from agent.keys import generate_keypair

    return generate_keypair(tmp_path_factory.mktemp("keys"), "build")


@pytest.fixture(scope="session")
def data_files(tmp_path_factory: pytest.TempPathFactory, digits: dict[str, np.ndarray]) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    np.savez(d / "eval.npz", **eval_set(digits))
    np.savez(d / "calib.npz", **calib_set(digits))
    return {"eval": d / "eval.npz", "calib": d / "calib.npz", "dir": d}


@pytest.fixture(scope="session")
def mlp_onnx(tmp_path_factory: pytest.TempPathFactory, mlp: Any, digits: dict[str, np.ndarray]) -> Path:
    from compiler.export import export_torch

    path = tmp_path_factory.mktemp("onnx") / "mlp.onnx"
    export_torch(mlp, {"input": digits["x_test"][:2]}, path)
    return path


@pytest.fixture(scope="session")
def mlp_pt2(tmp_path_factory: pytest.TempPathFactory, mlp: Any, digits: dict[str, np.ndarray]) -> Path:
    import torch

    path = tmp_path_factory.mktemp("pt2") / "mlp.pt2"
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(mlp, (torch.from_numpy(digits["x_test"][:2]),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


@pytest.fixture()
def build(keys: tuple[Path, Path], tmp_path: Path):
    """compile_model with quiet, quick defaults; keyword arguments override CompileConfig fields."""
    from compiler.config import CompileConfig
    from compiler.pipeline import compile_model

    def run(**kwargs: Any):
        defaults = {"signing_key": keys[0], "out": tmp_path / "out", "progress": False, "latency_iterations": 10}
        return compile_model(CompileConfig(**{**defaults, **kwargs}))

    return run


ALL_CLASSES = ["x86-64-generic", "x86-avx512-vnni", "arm64-cortex-a", "mcu-class-int8", "nvidia-jetson"]
MLP_BUILD = {"name": "digits-mlp", "version": 3, "latency_iterations": 10}


class MlpBuilds(list):
    """BuildResults, one per class, plus the gate's eval-set outputs per class (`gated`)."""

    gated: dict[str, list[np.ndarray]]


@pytest.fixture(scope="session")
def mlp_builds(mlp: Any, digits: dict[str, np.ndarray], keys: tuple[Path, Path],
               tmp_path_factory: pytest.TempPathFactory) -> MlpBuilds:
    """The digits MLP compiled once for every device class (each at its own format and precision).

    Why session-wide: the format, serving and reproducibility tests each compiled this same model
    for the same classes; one build serves them all. `gated[device_class]` holds the eval-set
    outputs the gate computed for each candidate of that class, in order (the last is the chosen one's
    when the class passed on its first candidate)."""
    from compiler import candidates
    from compiler.config import CompileConfig
    from compiler.pipeline import compile_model

    gated: dict[str, list[np.ndarray]] = {}
    original = candidates.Evaluator.__call__

    def spy(self: Any, art: Any, ctx: Any) -> Any:
        res = original(self, art, ctx)
        if res.outputs is not None:
            dc = next(c for c in ALL_CLASSES if c in Path(art.entry_path).parts)
            gated.setdefault(dc, []).append(np.array(res.outputs))
        return res

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(candidates.Evaluator, "__call__", spy)
        results = compile_model(CompileConfig(torch=mlp, calib=calib_set(digits, "mlp"), eval=eval_set(digits, "mlp"),
                                              device_classes=ALL_CLASSES, signing_key=keys[0],
                                              out=tmp_path_factory.mktemp("mlp-builds"), progress=False, **MLP_BUILD))
    builds = MlpBuilds(results)
    builds.gated = gated
    return builds
