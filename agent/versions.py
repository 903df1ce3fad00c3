"""Anti-rollback memory: the highest version this device ever accepted, for every model name.

Kept forever in state_dir/models/versions.json ({"floors": {name: version}}), replaced
atomically (tmp + fsync + rename), so neither a restart nor a kill -9 lowers a floor. Installing
`other` v1 and then `digits` v1 is refused when `digits` v2 ran once: the floor is per name and
does not move back when the active model changes.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from agent.canonical import canonical_json
from agent.config import ConfigError
from agent.model_store import write_atomic

log = logging.getLogger(__name__)


class VersionFloors:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.floors: dict[str, int] = {}
        try:
            doc = json.loads(self.path.read_text())
            self.floors = {str(k): int(v) for k, v in doc["floors"].items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # Never silently forget floors: refusing to start is safer than allowing downgrades.
            raise ConfigError(f"{self.path} is damaged ({exc}); restore it, or remove it knowing that the"
                              " device then forgets which model versions it ran") from None

    def floor(self, name: str) -> int | None:
        return self.floors.get(name)

    def known(self, name: str) -> bool:
        return name in self.floors

    def record(self, name: str, version: int) -> None:
        """Raise the floor for `name` to `version` (never lowers it); persisted before returning."""
        with self._lock:
            if self.floors.get(name, -1) >= version:
                return
            floors = {**self.floors, name: int(version)}
            write_atomic(self.path, canonical_json({"floors": floors}))
            self.floors = floors
            log.info("event=version-floor name=%s version=%d", name, version)
