"""Helpers to forge bundles that bypass build_bundle, for refusal tests."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from agent.canonical import canonical_json


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def reg(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    return info, data


def read_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        out = []
        for m in tar.getmembers():
            fh = tar.extractfile(m)
            out.append((m.name, fh.read() if fh else b""))
        return out


def json_member(name: str, obj: object) -> tuple[tarfile.TarInfo, bytes]:
    return reg(name, canonical_json(obj))
