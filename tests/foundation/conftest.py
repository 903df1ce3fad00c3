from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle import build_bundle
from agent.keys import Keyring


@pytest.fixture(scope="session")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def keyring(signing_key: Ed25519PrivateKey) -> Keyring:
    return Keyring.from_public_keys([signing_key.public_key()])


def manifest_fields(version: int = 3, **model: object) -> dict:
    return {
        "model": {"name": "digits", "version": version, "device_class": "x86-64-generic", "format": "onnx",
                  "precision": "int8", **model},
        "entrypoint": "model.onnx",
        "inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", 64]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}],
        "metrics": {"accuracy": 0.97},
        "provenance": {"code_version": "test"},
        "drift_baseline": {},
    }


@pytest.fixture
def model_files(tmp_path: Path) -> dict[str, Path]:
    a = tmp_path / "src" / "model.onnx"
    b = tmp_path / "src" / "labels.json"
    a.parent.mkdir()
    a.write_bytes(bytes(range(256)) * 20)
    b.write_text('["0","1","2","3","4","5","6","7","8","9"]')
    return {"model.onnx": a, "labels.json": b}


@pytest.fixture
def bundle_path(tmp_path: Path, model_files: dict[str, Path], signing_key: Ed25519PrivateKey) -> Path:
    out = tmp_path / "digits-v3.efb"
    build_bundle(out, model_files, manifest_fields(), signing_key)
    return out
