"""The device's own key (signs everything it reports). The keys the device trusts, by role,
live in agent.trust.TrustStore."""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.keys import generate_keypair, load_private_key

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
