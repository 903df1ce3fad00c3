"""The device's own key (signs everything it reports) and the persisted fleet keyring.

The keyring starts from the configured fleet public keys and is saved to
state_dir/keyring.json; a rotate-key command adds (and may retire) keys there, so a rotation
survives restarts even if the config file still lists only the old key.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.canonical import canonical_json
from agent.keys import Keyring, generate_keypair, load_private_key
from agent.model_store import write_atomic

log = logging.getLogger(__name__)


def load_or_create_device_key(path: Path) -> Ed25519PrivateKey:
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        name = path.name[:-4] if path.name.endswith(".key") else path.name
        priv, _pub = generate_keypair(path.parent, name)
        if priv != path:
            priv.rename(path)
        log.info("event=device-key-created path=%s", path)
    return load_private_key(path)


class FleetKeys:
    """Thread-safe holder of the trusted fleet keyring, persisted on change."""

    def __init__(self, state_dir: Path, configured: list[str]) -> None:
        self.path = Path(state_dir) / "keyring.json"
        self._lock = threading.Lock()
        ring = Keyring()
        retired: set[str] = set()
        if self.path.exists():
            data = json.loads(self.path.read_text())
            ring = Keyring.from_dict(data.get("keys", {}))
            retired = set(data.get("retired", []))
        for kid, key in Keyring.from_files(configured).keys.items():
            if kid not in retired:
                ring.keys.setdefault(kid, key)
        self.retired = retired
        self.keyring = ring
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, canonical_json({"keys": self.keyring.to_dict(), "retired": sorted(self.retired)}))

    def ids(self) -> list[str]:
        return sorted(self.keyring.keys)

    def rotate(self, new_key_b64: str, retire: str | None) -> str:
        from agent.keys import public_key_from_b64

        with self._lock:
            ring = Keyring(dict(self.keyring.keys))
            kid = ring.add(public_key_from_b64(new_key_b64))
            if retire and retire != kid:
                ring.remove(retire)
                self.retired.add(retire)
            self.retired.discard(kid)
            if not len(ring):
                raise ValueError("rotation would leave no trusted key")
            self.keyring.keys = ring.keys  # same Keyring object: CommandGuard sees the change
            self._save()
            return kid
