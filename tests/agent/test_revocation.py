"""Issue 16: a retired model version travels to devices in the root-signed key list's `revoked`
section; the agent's install path refuses it (bundle-refused event), keeps serving its model,
installs other versions, and keeps the revocation across a restart."""

import hashlib

import pytest

from agent.keylist import KeyListError, make_keylist, parse_keylist, sign_keylist, verify_update
from agent.keys import load_private_key, load_public_key
from agent.lifecycle import InstallError
from agent.trust import TrustStore


def _keylist(fleet_keys, version: int, revoked) -> dict:  # type: ignore[no-untyped-def,type-arg]
    pub = {r: load_public_key(fleet_keys[p]) for r, p in (("root", "root_pub"), ("fleet", "pub"),
                                                           ("build", "build_pub"))}
    return sign_keylist(make_keylist(version, {r: [k] for r, k in pub.items()}, revoked=revoked),
                        [load_private_key(fleet_keys["root"])])


def test_agent_refuses_a_revoked_version(agent_factory, bundles, fleet_keys) -> None:  # type: ignore[no-untyped-def]
    a = agent_factory("revoke-1")
    a.install(bundles["v1"])
    v3_sha = hashlib.sha256(bundles["v3"].read_bytes()).hexdigest()
    a.keys.apply_keylist(_keylist(fleet_keys, 1, [{"model": "digits", "version": 2}, {"bundle_sha256": v3_sha}]))
    for b in ("v2", "v3"):
        with pytest.raises(InstallError) as exc:
            a.install(bundles[b])
        assert exc.value.reason == "revoked"
    assert a.predictor.active.installed.version == 1  # still serving its last good model
    # a restarted trust store still refuses: the revocation is persisted with the signed list
    again = TrustStore(a.state_dir, root_keys=[str(fleet_keys["root_pub"])])
    assert again.current.revocation("digits", 2) and not again.current.revocation("digits", 4)
    # a later list without the revocation lifts it (e.g. a revocation made by mistake)
    a.keys.apply_keylist(_keylist(fleet_keys, 2, []))
    assert a.install(bundles["v2"]).version == 2


def test_revoked_section_is_signed_and_checked(fleet_keys) -> None:  # type: ignore[no-untyped-def]
    doc = _keylist(fleet_keys, 3, [{"model": "digits", "version": 2}])
    assert parse_keylist(doc).revoked == ({"model": "digits", "version": 2},)
    stripped = {"payload": {**doc["payload"], "revoked": []}, "signatures": doc["signatures"]}
    seed = parse_keylist(_keylist(fleet_keys, 1, []))
    with pytest.raises(KeyListError, match="untrusted"):
        verify_update(seed, stripped)  # dropping a revocation breaks the root signature
    for bad in ([{"model": "digits"}], [{"bundle_sha256": "zz"}], {"model": "digits", "version": 2}):
        with pytest.raises(KeyListError, match="revoked"):
            parse_keylist({"payload": {**doc["payload"], "revoked": bad}, "signatures": []})
