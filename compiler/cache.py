"""Content-addressed build cache: key = hash(inputs, code version, tool versions, build config).

An entry is a folder holding the bundle and the build result; a hit copies the bundle out and
skips distillation, export, quantization and evaluation.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BuildCache:
    root: Path

    def _entry(self, key: str) -> Path:
        return Path(self.root) / key[:2] / key

    def get(self, key: str) -> tuple[Path, dict[str, Any]] | None:
        entry = self._entry(key)
        bundle, result = entry / "bundle.tar", entry / "result.json"
        if not (bundle.is_file() and result.is_file()):
            return None
        try:
            return bundle, json.loads(result.read_text())
        except (OSError, ValueError):
            return None

    def put(self, key: str, bundle: Path, result: dict[str, Any]) -> None:
        """Write into a temp folder and rename, so a crash never leaves a half entry."""
        entry = self._entry(key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:8]}-", dir=entry.parent))
        shutil.copyfile(bundle, tmp / "bundle.tar")
        (tmp / "result.json").write_text(json.dumps(result, indent=1, sort_keys=True))
        if entry.exists():
            shutil.rmtree(tmp)
            return
        os.replace(tmp, entry)
