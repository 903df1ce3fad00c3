"""The fleet keeps the signed key list it hands to devices and accepts a new one only as a device
would: the first signed by its own root, later ones by the root or by a threshold of fleet keys,
with a higher version, never dropping every key the fleet signs with."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.keylist import KeyListError, make_keylist, sign_keylist
from agent.keys import key_id
from fleet.registry.fleet_keys import current_keylist, device_trust, load_fleet_key, store_keylist
from fleet.settings import FleetSettings


def test_fleet_keylist_root_then_fleet_threshold(tmp_path) -> None:
    s = FleetSettings(data_dir=tmp_path / "fleet")
    assert device_trust(s)["keylist"] is None and device_trust(s)["root_keys"] == []
    fleet = load_fleet_key(s)
    root, f2, f3, build = (Ed25519PrivateKey.generate() for _ in range(4))
    keys = {"root": [root.public_key()], "fleet": [fleet.public_key(), f2.public_key(), f3.public_key()],
            "build": [build.public_key()]}
    must = [key_id(fleet)]
    with pytest.raises(KeyListError, match="untrusted"):   # the first list must be signed by its own root
        store_keylist(s, sign_keylist(make_keylist(1, keys), [fleet, f2]), must_trust=must)
    assert store_keylist(s, sign_keylist(make_keylist(1, keys), [root]), must_trust=must).version == 1
    trust = device_trust(s)
    assert trust["keylist"]["payload"]["version"] == 1 and len(trust["root_keys"]) == 1
    assert len(trust["fleet_keys"]) == 3 and len(trust["build_keys"]) == 1

    new_build = Ed25519PrivateKey.generate()
    v2 = make_keylist(2, {**keys, "build": [new_build.public_key()]})
    with pytest.raises(KeyListError, match="untrusted"):   # one fleet key is not a threshold
        store_keylist(s, sign_keylist(v2, [f2]), must_trust=must)
    with pytest.raises(KeyListError, match="untrusted"):   # a build key never counts
        store_keylist(s, sign_keylist(v2, [f2, build]), must_trust=must)
    assert store_keylist(s, sign_keylist(v2, [f2, f3]), must_trust=must).version == 2   # 2 of 3 fleet keys
    assert current_keylist(s).keys.ids("build") == [key_id(new_build)]

    cut_off = make_keylist(3, {**keys, "fleet": [f2.public_key()]})
    with pytest.raises(KeyListError, match="signing keys"):   # devices would refuse the fleet's commands
        store_keylist(s, sign_keylist(cut_off, [root]), must_trust=must)
    with pytest.raises(KeyListError, match="stale"):
        store_keylist(s, sign_keylist(v2, [root]), must_trust=must)
    assert current_keylist(s).version == 2
