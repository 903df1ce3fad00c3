"""The explain tests reuse the agent fixtures (real bundles, keys, agents) and a quiet compile helper."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.agent.conftest import agent_factory, bundles, config_factory, digits, fleet_keys, model_files  # noqa: F401
from tests.fleet.conftest import build_keys, db_url, fleet, pg_database  # noqa: F401


@pytest.fixture(scope="session")
def build_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from agent.keys import generate_keypair

    return generate_keypair(tmp_path_factory.mktemp("keys"), "build")


@pytest.fixture()
def build(build_key: tuple[Path, Path], tmp_path: Path):  # type: ignore[no-untyped-def]
    """compile_model with quiet, quick defaults; keyword arguments override CompileConfig fields."""
    import torch

    from compiler.config import CompileConfig
    from compiler.pipeline import compile_model

    torch.set_num_threads(1)

    def run(**kwargs: Any):  # type: ignore[no-untyped-def]
        defaults = {"signing_key": build_key[0], "out": tmp_path / "out", "progress": False,
                    "latency_iterations": 10}
        return compile_model(CompileConfig(**{**defaults, **kwargs}))

    return run
