"""The fleet's own signing key (commands, rollback approvals), the trusted build keys, and the
signed key list it hands to devices (at enrolment and in rotate-key commands).

The key list is signed offline with the root key (`edgefleet keys sign-keylist`) and uploaded;
the fleet never holds the root key. It keeps the newest list in data_dir/keys/keylist.json and
accepts a new one only if a device would (agent.keylist: root or fleet threshold, higher version).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.keylist import KeyList, KeyListError, parse_keylist, verify_first, verify_update
from agent.keys import Keyring, generate_keypair, load_private_key, load_public_key, public_key_to_b64
from agent.model_store import write_atomic
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


def keylist_path(settings: FleetSettings) -> Path:
    return settings.data_dir / "keys" / "keylist.json"


def current_keylist(settings: FleetSettings) -> KeyList | None:
    """The newest accepted signed key list, or None before the operator uploaded one."""
    try:
        return parse_keylist(json.loads(keylist_path(settings).read_text()))
    except FileNotFoundError:
        return None


def store_keylist(settings: FleetSettings, doc: Any, *, must_trust: list[str] | None = None) -> KeyList:
    """Accept `doc` as the fleet's key list if a device holding the current one would accept it
    (the first one must be signed by its own root keys). `must_trust`: key ids of which at least
    one must be a fleet key in it (the fleet's signing keys), so no device is cut off. Raises
    KeyListError."""
    cur = current_keylist(settings)
    new = verify_first(doc) if cur is None else verify_update(cur, doc)
    if must_trust and not set(must_trust) & set(new.keys.ids("fleet")):
        raise KeyListError("untrusted", f"key list v{new.version} trusts none of the fleet's signing keys"
                                        f" {must_trust}: devices would refuse every later command")
    path = keylist_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(new.document, sort_keys=True).encode())
    return new


def device_trust(settings: FleetSettings) -> dict[str, Any]:
    """What an enrolling device is told to trust: the signed key list (which pins the root) when
    there is one; the unsigned fleet and build key lists for agents from before key lists."""
    kl = current_keylist(settings)
    if kl is None:
        return {"fleet_keys": [public_key_to_b64(load_fleet_key(settings).public_key())],
                "build_keys": [public_key_to_b64(load_public_key(p)) for p in settings.trusted_build_keys],
                "root_keys": [], "keylist": None}
    return {role + "_keys": [public_key_to_b64(k) for _, k in sorted(kl.keys.role(role).keys.items())]
            for role in ("fleet", "build", "root")} | {"keylist": kl.document}


def sign_first_keylist(settings: FleetSettings, root_key_path: Path) -> KeyList:
    """Key list v1 (root, this fleet's key, its trusted build keys) signed with a root key file
    and stored. For demos and tests: in production the root key stays offline and the operator
    uploads the list signed with `edgefleet keys sign-keylist`."""
    from agent.keylist import make_keylist, sign_keylist

    root = load_private_key(root_key_path)
    fleet = load_fleet_key(settings)
    doc = sign_keylist(make_keylist(1, {"root": [root.public_key()], "fleet": [fleet.public_key()],
                                        "build": [load_public_key(p) for p in settings.trusted_build_keys]}), [root])
    from agent.keys import key_id

    return store_keylist(settings, doc, must_trust=[key_id(fleet)])
