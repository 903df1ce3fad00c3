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


def ustar_header(name: str, size: int, kind: bytes = b"0") -> bytes:
    """A raw POSIX ustar header; sizes octal cannot hold use GNU base-256, as real tools write them."""
    h = bytearray(512)
    raw = name.encode()
    h[0:len(raw)] = raw
    h[100:108] = b"0000644\0"
    h[108:116] = h[116:124] = b"0000000\0"
    if size >= 8**11:
        h[124] = 0x80
        h[125:136] = size.to_bytes(11, "big")
    else:
        h[124:136] = f"{size:011o}\0".encode()
    h[136:148] = b"00000000000\0"
    h[156:157] = kind
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[148:156] = b" " * 8
    h[148:156] = f"{sum(h):06o}\0 ".encode()
    return bytes(h)
