"""The signed key list: who may change the trusted keys (root, or a threshold of fleet keys),
anti-rollback of the list itself, and structure checks."""

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.keylist import KeyList, KeyListError, make_keylist, parse_keylist, sign_keylist, verify_update
from agent.keys import RoleKeys, key_id


def _k() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def world():
    w = {"root": _k(), "root2": _k(), "f1": _k(), "f2": _k(), "f3": _k(), "build": _k(), "evil": _k()}
    keys = {"root": [w["root"].public_key()], "fleet": [w[f].public_key() for f in ("f1", "f2", "f3")],
            "build": [w["build"].public_key()]}
    w["v1"] = verify_update(KeyList(0, RoleKeys.from_keys({"root": keys["root"]})),
                            sign_keylist(make_keylist(1, keys), [w["root"]]))
    w["keys"] = keys
    return w


def _with(keys, **changes):
    return {**keys, **changes}


def test_root_signs_and_versions_only_grow(world) -> None:
    w = world
    assert w["v1"].version == 1 and len(w["v1"].keys.role("fleet")) == 3
    v2 = sign_keylist(make_keylist(2, _with(w["keys"], build=[w["evil"].public_key()])), [w["root"]])
    assert key_id(w["evil"]) in verify_update(w["v1"], v2).keys.role("build")
    same = sign_keylist(make_keylist(1, w["keys"]), [w["root"]])
    with pytest.raises(KeyListError) as exc:
        verify_update(w["v1"], same)
    assert exc.value.reason == "stale"


def test_build_and_single_fleet_signatures_do_not_count(world) -> None:
    w = world
    payload = make_keylist(2, _with(w["keys"], fleet=[w["evil"].public_key()]))
    for signers in ([w["build"]], [w["f1"]], [w["f1"], w["build"]], [w["evil"], w["f1"]], [w["build"], w["evil"]]):
        with pytest.raises(KeyListError) as exc:
            verify_update(w["v1"], sign_keylist(payload, signers))
        assert exc.value.reason == "untrusted"
    # the same signature twice is one signer
    doc = sign_keylist(payload, [w["f1"]])
    doc["signatures"].append(dict(doc["signatures"][0]))
    with pytest.raises(KeyListError):
        verify_update(w["v1"], doc)


def test_fleet_threshold_rotates_fleet_and_build_keys_but_never_root(world) -> None:
    w = world
    rotated = make_keylist(2, _with(w["keys"], fleet=[w["f2"].public_key(), w["f3"].public_key(),
                                                      w["evil"].public_key()]))
    assert verify_update(w["v1"], sign_keylist(rotated, [w["f1"], w["f2"]])).version == 2
    new_root = make_keylist(2, _with(w["keys"], root=[w["evil"].public_key()]))
    with pytest.raises(KeyListError, match="untrusted"):
        verify_update(w["v1"], sign_keylist(new_root, [w["f1"], w["f2"], w["f3"]]))
    lower = make_keylist(2, w["keys"], {"root": 1, "fleet": 3})
    with pytest.raises(KeyListError, match="untrusted"):
        verify_update(w["v1"], sign_keylist(lower, [w["f1"], w["f2"]]))


def test_root_rotation_needs_old_and_new_root(world) -> None:
    w = world
    payload = make_keylist(2, _with(w["keys"], root=[w["root2"].public_key()]))
    with pytest.raises(KeyListError, match="untrusted"):
        verify_update(w["v1"], sign_keylist(payload, [w["root"]]))
    with pytest.raises(KeyListError, match="untrusted"):
        verify_update(w["v1"], sign_keylist(payload, [w["root2"]]))
    v2 = verify_update(w["v1"], sign_keylist(payload, [w["root"], w["root2"]]))
    # from now on only the new root counts
    v3 = make_keylist(3, _with(w["keys"], root=[w["root2"].public_key()]))
    with pytest.raises(KeyListError):
        verify_update(v2, sign_keylist(v3, [w["root"]]))
    assert verify_update(v2, sign_keylist(v3, [w["root2"]])).version == 3


@pytest.mark.parametrize("mutate, match", [
    (lambda p: p.update(schema="edgefleet.command/v1"), "not a key list"),
    (lambda p: p.update(version=0), "version"),
    (lambda p: p.update(version=True), "version"),
    (lambda p: p.update(thresholds={"root": 1, "fleet": 1}), "at least 2"),
    (lambda p: p.update(thresholds={"root": 2, "fleet": 2}), "root threshold"),
    (lambda p: p["keys"].update({"0000000000000000": next(iter(p["keys"].values()))}), "does not match"),
    (lambda p: next(iter(p["keys"].values())).update(role="admin"), "role"),
    (lambda p: p.update(keys={k: v for k, v in p["keys"].items() if v["role"] != "fleet"}), "fleet key"),
])
def test_malformed_lists_are_refused(world, mutate, match) -> None:
    import copy

    doc = sign_keylist(make_keylist(2, world["keys"]), [world["root"]])
    doc = copy.deepcopy(doc)
    mutate(doc["payload"])
    with pytest.raises(KeyListError, match=match) as exc:
        verify_update(world["v1"], doc)
    assert exc.value.reason == "malformed"


def test_a_key_has_one_role(world) -> None:
    from agent.keys import RoleError

    with pytest.raises(RoleError, match="both"):
        make_keylist(2, _with(world["keys"], build=[world["f1"].public_key()]))
    assert parse_keylist(sign_keylist(make_keylist(3, world["keys"]), [])).version == 3
