"""Ed25519 keys, key ids and keyrings (several trusted keys at once, for rotation).

Trusted keys carry a role, as TUF and Uptane separate them (RoleKeys): `root` signs key lists
only, `fleet` signs commands and rollback approvals, `build` signs bundles. A key has one role,
and each check asks for the keyring of exactly one role.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.canonical import canonical_json


class KeyFileError(Exception):
    """A key file is missing, unreadable or not an Ed25519 key."""


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """Short stable id: the first 16 hex digits of SHA-256 over the raw public key."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return hashlib.sha256(public_bytes(pub)).hexdigest()[:16]


def generate_keypair(out_dir: Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key (PEM PKCS8, mode 0600) and NAME.pub (PEM SubjectPublicKeyInfo)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    if priv_path.exists():
        raise KeyFileError(f"{priv_path} already exists; refusing to overwrite a private key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub_path.write_bytes(public_pem(key.public_key()))
    return priv_path, pub_path


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(f"cannot load private key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(f"cannot load public key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 public key")
    return key


def public_key_from_b64(data: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(data))


def public_key_to_b64(key: Ed25519PublicKey) -> str:
    return base64.b64encode(public_bytes(key)).decode()


@dataclass
class Keyring:
    """Trusted public keys by key id. Verification accepts a signature by any of them."""

    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)

    @classmethod
    def from_public_keys(cls, keys: Iterable[Ed25519PublicKey]) -> Keyring:
        return cls({key_id(k): k for k in keys})

    @classmethod
    def from_files(cls, paths: Iterable[Path | str]) -> Keyring:
        return cls.from_public_keys(load_public_key(Path(p)) for p in paths)

    def add(self, key: Ed25519PublicKey) -> str:
        kid = key_id(key)
        self.keys[kid] = key
        return kid

    def remove(self, kid: str) -> None:
        self.keys.pop(kid, None)

    def __contains__(self, kid: object) -> bool:
        return kid in self.keys

    def __len__(self) -> int:
        return len(self.keys)

    def to_dict(self) -> dict[str, str]:
        return {kid: public_key_to_b64(k) for kid, k in sorted(self.keys.items())}

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> Keyring:
        return cls({kid: public_key_from_b64(b64) for kid, b64 in data.items()})


ROLES = ("root", "fleet", "build")


class RoleError(ValueError):
    """A key is claimed by two roles, or a role name is unknown."""


@dataclass
class RoleKeys:
    """Trusted public keys by role. The Keyring objects live as long as the holder (update() swaps
    their contents in place), so verifiers that hold a reference see changes at once."""

    rings: dict[str, Keyring] = field(default_factory=lambda: {r: Keyring() for r in ROLES})

    @classmethod
    def from_keys(cls, by_role: Mapping[str, Iterable[Ed25519PublicKey]]) -> RoleKeys:
        out = cls()
        for role, keys in by_role.items():
            if role not in ROLES:
                raise RoleError(f"unknown key role {role!r} (expected one of {', '.join(ROLES)})")
            for k in keys:
                kid = key_id(k)
                other = out.role_of(kid)
                if other is not None and other != role:
                    raise RoleError(f"key {kid} is listed as both {other} and {role}: a key has one role")
                out.rings[role].keys[kid] = k
        return out

    def role(self, role: str) -> Keyring:
        return self.rings[role]

    def role_of(self, kid: str) -> str | None:
        return next((r for r, ring in self.rings.items() if kid in ring), None)

    def ids(self, role: str) -> list[str]:
        return sorted(self.rings[role].keys)

    def update(self, other: RoleKeys) -> None:
        for role in ROLES:
            self.rings[role].keys = dict(other.rings[role].keys)

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {kid: {"role": role, "public_key": public_key_to_b64(k)}
                for role in ROLES for kid, k in sorted(self.rings[role].keys.items())}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoleKeys:
        """Inverse of to_dict; checks that each key id is the id of its key. Raises RoleError."""
        by_role: dict[str, list[Ed25519PublicKey]] = {r: [] for r in ROLES}
        if not isinstance(data, Mapping):
            raise RoleError("keys must be an object {key_id: {role, public_key}}")
        for kid, entry in data.items():
            if not isinstance(entry, Mapping) or entry.get("role") not in ROLES:
                raise RoleError(f"key {kid!r}: needs a role among {', '.join(ROLES)} and a public_key")
            try:
                key = public_key_from_b64(str(entry.get("public_key")))
            except (ValueError, TypeError) as exc:
                raise RoleError(f"key {kid!r}: not a base64 raw Ed25519 public key") from exc
            if key_id(key) != kid:
                raise RoleError(f"key {kid!r}: the id does not match its public key")
            by_role[entry["role"]].append(key)
        return cls.from_keys(by_role)


class SignatureError(Exception):
    """A signed document failed verification; `reason` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def sign_payload(payload: Any, key: Ed25519PrivateKey) -> dict[str, str]:
    """Detached signature over the canonical encoding of `payload`."""
    return {
        "alg": "Ed25519",
        "key_id": key_id(key),
        "sig": base64.b64encode(key.sign(canonical_json(payload))).decode(),
    }


def verify_payload(payload: Any, signature: Mapping[str, Any] | None, keyring: Keyring) -> str:
    """Check a detached signature; return the key id that signed. Raises SignatureError."""
    if not signature:
        raise SignatureError("no-signature", "the document carries no signature")
    if signature.get("alg") != "Ed25519":
        raise SignatureError("bad-signature", f"unsupported algorithm {signature.get('alg')!r}")
    kid = signature.get("key_id")
    if not isinstance(kid, str) or kid not in keyring.keys:
        raise SignatureError("unknown-key", f"key id {kid!r} is not among the trusted keys")
    try:
        raw = base64.b64decode(str(signature.get("sig", "")), validate=True)
        keyring.keys[kid].verify(raw, canonical_json(payload))
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError("bad-signature", f"signature by key {kid} does not match") from exc
    return kid


def sign_document(payload: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """An envelope {"payload": ..., "signature": ...} for commands and reports."""
    return {"payload": payload, "signature": sign_payload(payload, key)}


def verify_document(doc: Any, keyring: Keyring) -> dict[str, Any]:
    """Verify an envelope made by sign_document and return its payload."""
    if not isinstance(doc, dict) or not isinstance(doc.get("payload"), dict):
        raise SignatureError("malformed", "expected an object with 'payload' and 'signature'")
    verify_payload(doc["payload"], doc.get("signature"), keyring)
    return doc["payload"]
