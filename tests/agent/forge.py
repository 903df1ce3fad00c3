"""Forge signed bundles that build_bundle would refuse (bad names, specs, classes, formats), in the
exact canonical layout, so the verifier's own checks are what refuses them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle_build import SCHEMA, _write_canonical_tar, file_entry
from agent.canonical import canonical_json
from agent.keys import sign_payload


def forge_bundle(out: Path, files: dict[str, Path], fields: dict[str, Any], key: Ed25519PrivateKey | None) -> Path:
    """Write a canonical bundle WITHOUT validating the manifest; unsigned when key is None."""
    entries = [file_entry(rel, Path(src)) for rel, src in sorted(files.items())]
    manifest = {**copy.deepcopy(fields), "schema": SCHEMA, "files": entries}
    sigs = {"signatures": [sign_payload(manifest, key)] if key is not None else []}
    with open(out, "wb") as raw:
        _write_canonical_tar(raw, canonical_json(manifest), canonical_json(sigs), entries, files)
    return out


def files_outside(root: Path, allowed: Path) -> list[Path]:
    """Every path under `root` that is not `allowed` or inside it."""
    allowed = allowed.resolve()
    return [p for p in root.rglob("*") if p.resolve() != allowed and allowed not in p.resolve().parents]
