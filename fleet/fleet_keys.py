"""The fleet's own signing key (commands, rollback approvals) and the trusted build keys."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.keys import Keyring, generate_keypair, load_private_key
from fleet.settings import FleetSettings


def signing_key_path(settings: FleetSettings) -> Path:
    return settings.signing_key_path or settings.data_dir / "keys" / "fleet.key"


def load_fleet_key(settings: FleetSettings, *, create: bool = True) -> Ed25519PrivateKey:
    """The fleet command key; created (mode 0600) in the data dir when none is configured."""
    path = signing_key_path(settings)
    if not path.exists() and create and settings.signing_key_path is None:
        generate_keypair(path.parent, path.stem)
    return load_private_key(path)


def build_keyring(settings: FleetSettings) -> Keyring:
    """Keys trusted to sign model bundles (settings.trusted_build_keys)."""
    return Keyring.from_files(settings.trusted_build_keys)
