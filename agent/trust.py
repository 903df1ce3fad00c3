"""The device's trusted keys by role, persisted in state_dir/keyring.json.

Before any signed key list arrives (version 0) the roles come from the config: `root_keys`
(pinned at enrolment), `trusted_keys` (fleet keys: commands, rollback approvals) and
`build_keys` (bundles). From then on the newest accepted signed key list rules, and the config's
key files are only a seed: a key the list dropped stays dropped.

Migration of a keyring.json written before roles existed ({"keys": {id: b64}, "retired": [...]}):
each key gets the role of its source. A key file listed in `build_keys`, or named build-*.pub by
the old `agent enrol`, is a build key; every other key is a fleet key (it was trusted for
commands before). No root is pinned by migration, so key changes are refused until the device
is re-enrolled or `root_keys` is set; a key in two roles is refused with a message.

Writes are atomic (tmp + fsync + rename + directory fsync): a kill -9 during an update leaves
the old or the new keyring, never a torn or mixed one.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.canonical import canonical_json
from agent.keylist import DEFAULT_THRESHOLDS, KeyList, KeyListError, parse_keylist, verify_update
from agent.keys import KeyFileError, Keyring, RoleError, RoleKeys, load_public_key
from agent.model_store import write_atomic

log = logging.getLogger(__name__)
FORMAT = 2
REENROL_HINT = ("re-enrol the device (`edgefleet agent enrol`) or list each key file under exactly one of"
                " root_keys, trusted_keys (fleet) and build_keys in agent.toml")


def _load(paths: Iterable[str | Path]) -> list[Ed25519PublicKey]:
    return [load_public_key(Path(p)) for p in paths]


class TrustStore:
    """Thread-safe holder of the role keyrings. `fleet`, `build` and `root` are Keyring objects
    that stay the same for the life of the store (updates replace their contents)."""

    def __init__(self, state_dir: Path, *, root_keys: Iterable[str] = (), fleet_keys: Iterable[str] = (),
                 build_keys: Iterable[str] = ()) -> None:
        self.path = Path(state_dir) / "keyring.json"
        self._lock = threading.Lock()
        self.roles = RoleKeys()
        self.migrated, self.retired = Keyring(), list[str]()  # version 0 only: what a pre-roles keyring left
        fleet_paths, build_paths = list(fleet_keys), list(build_keys)
        if not build_paths:  # an old enrol wrote trust/build-N.pub into trusted_keys: that is its source
            build_paths = [p for p in fleet_paths if Path(p).name.startswith("build")]
            fleet_paths = [p for p in fleet_paths if p not in build_paths]
        try:
            configured = RoleKeys.from_keys({"root": _load(root_keys), "fleet": _load(fleet_paths),
                                             "build": _load(build_paths)})
        except RoleError as exc:
            raise KeyFileError(f"{exc}; {REENROL_HINT}") from None
        for tmp in self.path.parent.glob(f".{self.path.name}.tmp-*"):  # a write a crash interrupted
            tmp.unlink(missing_ok=True)
        saved = self._read()
        if saved.get("format") == FORMAT and int(saved.get("version", 0)) >= 1:
            try:
                self.current = parse_keylist(saved["keylist"])
            except (KeyListError, KeyError) as exc:
                raise KeyFileError(f"{self.path} holds a damaged key list ({exc}); {REENROL_HINT}") from None
            self.roles.update(self.current.keys)
            ignored = sorted(set(configured.to_dict()) - set(self.current.keys.to_dict()))
            if ignored:
                log.info("event=config-keys-ignored keys=%s reason=signed key list v%d rules", ",".join(ignored),
                         self.current.version)
        else:
            self.roles.update(configured)
            if "keys" in saved and saved.get("format") is None:
                saved = self._migrate(saved, configured)
            self._apply_legacy(saved, configured)
            self.current = KeyList(0, RoleKeys.from_dict(self.roles.to_dict()), dict(DEFAULT_THRESHOLDS))
            self._save()
        if not len(self.root):
            log.warning("event=no-root-key: key-list updates will be refused; %s", REENROL_HINT)
        if not len(self.build):
            log.warning("event=no-build-keys: every bundle will be refused; %s", REENROL_HINT)

    # -- roles --------------------------------------------------------------------------------
    @property
    def root(self) -> Keyring:
        return self.roles.role("root")

    @property
    def fleet(self) -> Keyring:
        return self.roles.role("fleet")

    @property
    def build(self) -> Keyring:
        return self.roles.role("build")

    @property
    def version(self) -> int:
        return self.current.version

    def ids(self, role: str = "fleet") -> list[str]:
        return self.roles.ids(role)

    # -- persistence --------------------------------------------------------------------------
    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise KeyFileError(f"{self.path} is unreadable ({exc}); {REENROL_HINT}") from None
        return data if isinstance(data, dict) else {}

    def _migrate(self, legacy: dict[str, Any], configured: RoleKeys) -> dict[str, Any]:
        """Keys a rotate-key once added (legacy keyring.json) become fleet keys unless the config
        gives them another role; retired keys stay out. Returns what version 0 keeps of it."""
        retired = sorted(set(legacy.get("retired") or []))
        try:
            old = Keyring.from_dict(legacy.get("keys") or {})
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{self.path}: old keyring unreadable ({exc}); {REENROL_HINT}") from None
        added = {kid: b64 for kid, b64 in old.to_dict().items() if kid not in retired and configured.role_of(kid) is None}
        log.warning("event=keyring-migrated added_as_fleet=%s retired=%s", sorted(added), retired)
        return {"migrated": added, "retired": retired}

    def _apply_legacy(self, saved: dict[str, Any], configured: RoleKeys) -> None:
        """Version 0 = the config, plus what a pre-roles keyring added (as fleet keys), minus what
        it retired; kept in keyring.json so every restart gives the same roles."""
        self.retired = [str(k) for k in saved.get("retired") or []]
        try:
            self.migrated = Keyring.from_dict(saved.get("migrated") or {})
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{self.path}: migrated keys unreadable ({exc}); {REENROL_HINT}") from None
        for kid in self.retired:
            for role in ("fleet", "build"):
                self.roles.role(role).remove(kid)
        for kid, key in self.migrated.keys.items():
            if configured.role_of(kid) is None and kid not in self.retired:
                self.fleet.keys[kid] = key

    def _save(self, kl: KeyList | None = None) -> None:
        kl = kl or self.current
        roles = kl.keys if kl.version else self.roles
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"format": FORMAT, "version": kl.version, "keys": roles.to_dict(), "thresholds": kl.thresholds,
               "keylist": kl.document}
        if not kl.version:
            doc.update(migrated=self.migrated.to_dict(), retired=self.retired)
        write_atomic(self.path, canonical_json(doc))

    # -- updates ------------------------------------------------------------------------------
    def apply_keylist(self, doc: Any) -> KeyList:
        """Verify `doc` against the current list (root or fleet threshold, higher version), then
        persist it and switch every role keyring at once. Raises KeyListError."""
        with self._lock:
            new = verify_update(self.current, doc)
            self._save(new)  # on disk first: a crash after this restarts on the new list
            self.current = new
            self.roles.update(new.keys)
            log.info("event=keylist-accepted version=%d root=%s fleet=%s build=%s", new.version,
                     self.ids("root"), self.ids("fleet"), self.ids("build"))
            return new
