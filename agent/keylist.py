"""The signed key list: which keys a device trusts, in which role (TUF's root.json, cut down).

    {"payload": {"schema": "edgefleet.keylist/v1", "version": N, "issued_at": t,
                 "keys": {key_id: {"role": "root"|"fleet"|"build", "public_key": b64}},
                 "thresholds": {"root": 1, "fleet": 2}},
     "signatures": [{"alg": "Ed25519", "key_id": ..., "sig": ...}, ...]}

A device moves from its current list to a new one only when (verify_update):
  * the new version is strictly higher (anti-rollback: an old list cannot be replayed), and
  * `thresholds.root` of the CURRENT root keys signed it (the offline root path), and, when the
    root keys change, `thresholds.root` of the NEW root keys signed it too (they consent), or
  * `thresholds.fleet` (at least 2) distinct CURRENT fleet keys signed it, and it keeps the root
    keys and thresholds unchanged (the fleet may rotate fleet and build keys, never root).
Build-key signatures never count: a stolen build key cannot change who is trusted.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.canonical import canonical_json
from agent.keys import ROLES, RoleError, RoleKeys, key_id, sign_payload

KEYLIST_SCHEMA = "edgefleet.keylist/v1"
DEFAULT_THRESHOLDS = {"root": 1, "fleet": 2}
MIN_FLEET_THRESHOLD = 2  # one stolen fleet key alone must never change the trusted keys


class KeyListError(Exception):
    """A key list was refused; `reason` is a stable code (malformed, stale, untrusted)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass
class KeyList:
    """A parsed key list. Version 0 is the device's local list from its config (never signed)."""

    version: int
    keys: RoleKeys
    thresholds: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    document: dict[str, Any] | None = None
    revoked: tuple[dict[str, Any], ...] = ()  # retired versions: {model, version} or {bundle_sha256}

    def revocation(self, model: Any, version: Any, bundle_sha256: str | None = None) -> str | None:
        """Why this bundle is revoked (a retired model version or bundle digest), or None."""
        for r in self.revoked:
            if "bundle_sha256" in r and r["bundle_sha256"] == bundle_sha256:
                return f"bundle {bundle_sha256} is revoked by key list v{self.version}"
            if r.get("model") == model and r.get("version") == version:
                return f"{model} v{version} is retired (revoked by key list v{self.version})"
        return None


def make_keylist(version: int, keys: Mapping[str, Iterable[Ed25519PublicKey]],
                 thresholds: Mapping[str, int] | None = None, *, issued_at: float | None = None,
                 revoked: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """An unsigned key list payload; sign it with sign_keylist (offline, with the root key).
    `revoked`: retired model versions ({model, version}) or bundles ({bundle_sha256}) that
    devices must refuse to install (the fleet lists them at /api/lifecycle/revocations)."""
    roles = RoleKeys.from_keys(keys)
    payload = {"schema": KEYLIST_SCHEMA, "version": int(version),
               "issued_at": round(time.time() if issued_at is None else issued_at, 3),
               "keys": roles.to_dict(), "thresholds": dict(thresholds or DEFAULT_THRESHOLDS)}
    if revoked:
        payload["revoked"] = revoked if isinstance(revoked, list) else list(revoked)  # checked below
    parse_payload(payload)  # refuse what a device would refuse, at signing time
    return payload


def sign_keylist(doc_or_payload: Mapping[str, Any], keys: Iterable[Ed25519PrivateKey]) -> dict[str, Any]:
    """Add signatures (one per key, no duplicates) to a key list payload or signed document."""
    if "payload" in doc_or_payload:
        payload, sigs = dict(doc_or_payload["payload"]), list(doc_or_payload.get("signatures") or [])
    else:
        payload, sigs = dict(doc_or_payload), []
    have = {s.get("key_id") for s in sigs if isinstance(s, Mapping)}
    for k in keys:
        if key_id(k) not in have:
            sigs.append(sign_payload(payload, k))
            have.add(key_id(k))
    return {"payload": payload, "signatures": sigs}


def parse_payload(payload: Any) -> KeyList:
    """Structure checks only (no signatures). Raises KeyListError("malformed")."""
    if not isinstance(payload, Mapping) or payload.get("schema") != KEYLIST_SCHEMA:
        raise KeyListError("malformed", f"not a key list (schema must be {KEYLIST_SCHEMA})")
    version = payload.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise KeyListError("malformed", "version must be an integer >= 1")
    try:
        keys = RoleKeys.from_dict(payload.get("keys"))  # type: ignore[arg-type]
    except RoleError as exc:
        raise KeyListError("malformed", str(exc)) from exc
    th = payload.get("thresholds")
    if not isinstance(th, Mapping) or set(th) != set(DEFAULT_THRESHOLDS) or \
            any(not isinstance(v, int) or isinstance(v, bool) for v in th.values()):
        raise KeyListError("malformed", "thresholds must be {\"root\": int, \"fleet\": int}")
    if not 1 <= th["root"] <= len(keys.role("root")):
        raise KeyListError("malformed", f"root threshold {th['root']} needs 1..{len(keys.role('root'))} root keys")
    if th["fleet"] < MIN_FLEET_THRESHOLD:
        raise KeyListError("malformed", f"fleet threshold must be at least {MIN_FLEET_THRESHOLD}")
    if not len(keys.role("fleet")):
        raise KeyListError("malformed", "a key list needs at least one fleet key")
    return KeyList(version, keys, dict(th), revoked=_parse_revoked(payload.get("revoked", [])))


def _parse_revoked(items: Any) -> tuple[dict[str, Any], ...]:
    """The optional `revoked` section: a list of {model, version} or {bundle_sha256}."""
    if not isinstance(items, list):
        raise KeyListError("malformed", "revoked must be a list")
    out = []
    for i, r in enumerate(items):
        if isinstance(r, Mapping) and set(r) == {"model", "version"} and isinstance(r["model"], str) \
                and isinstance(r["version"], int) and not isinstance(r["version"], bool):
            out.append({"model": r["model"], "version": r["version"]})
        elif isinstance(r, Mapping) and set(r) == {"bundle_sha256"} and isinstance(r["bundle_sha256"], str) \
                and len(r["bundle_sha256"]) == 64:
            out.append({"bundle_sha256": r["bundle_sha256"].lower()})
        else:
            raise KeyListError("malformed", f"revoked[{i}] must be {{model, version}} or {{bundle_sha256}}")
    return tuple(out)


def parse_keylist(doc: Any) -> KeyList:
    if not isinstance(doc, Mapping) or not isinstance(doc.get("signatures"), list):
        raise KeyListError("malformed", "expected {\"payload\": ..., \"signatures\": [...]}")
    kl = parse_payload(doc.get("payload"))
    kl.document = {"payload": dict(doc["payload"]), "signatures": list(doc["signatures"])}
    return kl


def _signers(payload: Mapping[str, Any], signatures: list[Any], keys: dict[str, Ed25519PublicKey]) -> set[str]:
    """Ids of the distinct keys in `keys` whose signature over `payload` verifies."""
    data = canonical_json(dict(payload))
    good: set[str] = set()
    for sig in signatures:
        if not isinstance(sig, Mapping) or sig.get("alg") != "Ed25519":
            continue
        kid = sig.get("key_id")
        if not isinstance(kid, str) or kid not in keys or kid in good:
            continue
        try:
            keys[kid].verify(base64.b64decode(str(sig.get("sig", "")), validate=True), data)
        except (InvalidSignature, ValueError):
            continue
        good.add(kid)
    return good


def verify_update(current: KeyList, doc: Any) -> KeyList:
    """The new key list if `doc` may replace `current`; raises KeyListError otherwise."""
    new = parse_keylist(doc)
    if new.version <= current.version:
        raise KeyListError("stale", f"key list version {new.version} is not above the trusted version"
                                    f" {current.version}")
    assert new.document is not None
    payload, sigs = new.document["payload"], new.document["signatures"]
    cur_root, cur_fleet = current.keys.role("root").keys, current.keys.role("fleet").keys
    new_root = new.keys.role("root").keys
    root_ok = bool(cur_root) and len(_signers(payload, sigs, cur_root)) >= current.thresholds["root"]
    if root_ok and set(new_root) != set(cur_root):
        # a root rotation: the new root keys must sign too (TUF: old and new thresholds)
        root_ok = len(_signers(payload, sigs, new_root)) >= new.thresholds["root"]
    fleet_ok = (len(_signers(payload, sigs, cur_fleet)) >= max(MIN_FLEET_THRESHOLD, current.thresholds["fleet"])
                and set(new_root) == set(cur_root) and new.thresholds == current.thresholds)
    if not (root_ok or fleet_ok):
        need = f"{current.thresholds['root']} of the trusted root keys" if cur_root else "a root key (none is pinned)"
        raise KeyListError("untrusted", f"key list v{new.version} must be signed by {need}, or by"
                                        f" {max(MIN_FLEET_THRESHOLD, current.thresholds['fleet'])} trusted fleet"
                                        " keys without changing the root keys or thresholds")
    return new


def role_counts(kl: KeyList) -> dict[str, int]:
    return {r: len(kl.keys.role(r)) for r in ROLES}


def verify_first(doc: Any, expect_root_ids: Iterable[str] | None = None) -> KeyList:
    """The first key list a party sees (enrolment, the fleet's first upload): it must be signed
    by the threshold of its OWN root keys, and when `expect_root_ids` is given (pinned out of
    band, e.g. `agent enrol --root-key-id`) those must be exactly its root keys."""
    kl = parse_keylist(doc)
    roots = set(kl.keys.ids("root"))
    if expect_root_ids is not None and set(expect_root_ids) != roots:
        raise KeyListError("untrusted", f"the key list's root keys {sorted(roots)} are not the pinned"
                                        f" {sorted(set(expect_root_ids))}")
    seed = KeyList(0, RoleKeys.from_keys({"root": kl.keys.role("root").keys.values()}), dict(kl.thresholds))
    return verify_update(seed, doc)
