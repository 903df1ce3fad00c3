"""Lineage back to training (issue 16): `edgefleet compile --training-run run.toml|run.json`
records the run that produced the model in the manifest's `provenance.training`, and
`--parent BUNDLE` records the bundle a distilled or re-quantized model came from in
`provenance.parent` (with its digests in `provenance.parent_bundle`). Both are part of the
build's cache key: other training metadata is another artifact.

A training-run file (every key optional, unknown keys refused so typos do not vanish):

    git_commit = "3f2c1a9"
    run_url = "https://ci.example.com/runs/812"
    run_id = "812"
    data_versions = { train = "sha256:...", eval = "sha256:..." }
    hyperparameters = { lr = 0.001, epochs = 30 }
    intended_use = "digit recognition on the line scanners"
    limitations = "not trained on handwritten input"
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compiler.errors import CompileInputError

TEXT_KEYS = ("git_commit", "run_url", "run_id", "intended_use", "limitations", "mlflow_run_id")
TABLE_KEYS = ("data_versions", "hyperparameters")
MAX_FILE = 1 << 20


def load_training_run(source: Any) -> dict[str, Any]:
    """The validated training-run metadata from a TOML/JSON file (or a mapping, Python API)."""
    if isinstance(source, dict):
        data, where = source, "training_run"
    else:
        path = Path(source)
        where = str(path)
        try:
            if path.stat().st_size > MAX_FILE:
                raise CompileInputError(f"{path}: a training-run file over {MAX_FILE} bytes is not metadata")
            text = path.read_text()
        except OSError as exc:
            raise CompileInputError(f"--training-run {path}: cannot read it ({exc.strerror or exc})") from None
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import tomllib

                data = tomllib.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
            raise CompileInputError(f"--training-run {path}: not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise CompileInputError(f"{where}: expected a table of training-run facts")
    unknown = sorted(set(data) - set(TEXT_KEYS) - set(TABLE_KEYS))
    if unknown:
        raise CompileInputError(f"{where}: unknown key(s) {', '.join(unknown)}; known: "
                                f"{', '.join(TEXT_KEYS + TABLE_KEYS)}")
    out: dict[str, Any] = {}
    for k in TEXT_KEYS:
        if k in data:
            if not isinstance(data[k], str) or len(data[k]) > 4000:
                raise CompileInputError(f"{where}: {k} must be a string (at most 4000 characters)")
            out[k] = data[k]
    for k in TABLE_KEYS:
        if k in data:
            if not isinstance(data[k], dict) or not all(isinstance(v, (str, int, float, bool)) for v in data[k].values()):
                raise CompileInputError(f"{where}: {k} must be a table of strings and numbers")
            out[k] = {str(a): b for a, b in data[k].items()}
    return out


def parent_from_bundle(path: Any) -> dict[str, Any]:
    """The parent bundle's identity, from its manifest (the signature was checked when it was
    built and uploaded; here it only names where this model came from)."""
    import hashlib

    from agent.bundle import BundleError, read_manifest_unverified

    p = Path(path)
    try:
        manifest = read_manifest_unverified(p)
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
    except (BundleError, OSError) as exc:
        raise CompileInputError(f"--parent {p}: not a readable bundle ({exc})") from None
    m = manifest.get("model") or {}
    if not isinstance(m.get("name"), str) or not isinstance(m.get("version"), int):
        raise CompileInputError(f"--parent {p}: the manifest names no model name and version")
    return {"name": m["name"], "version": m["version"], "device_class": m.get("device_class"),
            "bundle_sha256": digest}


def lineage_provenance(training_run: Any, parent: Any, mlflow_run: str | None = None) -> dict[str, Any]:
    """The provenance keys this module adds (empty when nothing is given). With an MLflow run,
    its facts come first and the file's override them (compiler.mlflow_link)."""
    out: dict[str, Any] = {}
    training: dict[str, Any] = {}
    if mlflow_run:
        from compiler.mlflow_link import training_from_mlflow

        training.update(training_from_mlflow(mlflow_run))
    if training_run is not None:
        training.update(load_training_run(training_run))
    if training:
        out["training"] = training
    if parent is not None:
        pb = parent_from_bundle(parent)
        out["parent"] = f"{pb['name']} v{pb['version']}"
        out["parent_bundle"] = pb
    return out
