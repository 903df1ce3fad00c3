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


@pytest.mark.slow
def test_retired_version_travels_in_the_fleet_keylist(agent_factory, bundles, fleet_keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Fleet: retire v2 (API), sign the revocations into the next key list, upload it; the fleet
    sends it in rotate-key; the real agent accepts it and then refuses to install v2."""
    import json
    import urllib.request
    import uuid

    from sqlmodel import Session

    from agent.keys import public_key_to_b64
    from fleet.models import Device
    from fleet.server import FleetServer
    from fleet.settings import FleetSettings
    from tests.agent.conftest import BROKER_URL, wait_for

    fleet_id = f"rv{uuid.uuid4().hex[:8]}"
    s = FleetSettings(data_dir=tmp_path / "fleet", mqtt_url=BROKER_URL, fleet_id=fleet_id,
                      signing_key_path=fleet_keys["priv"], trusted_build_keys=[fleet_keys["build_pub"]],
                      api_tokens={"adm": "admin"}, embedded_broker=False, start_rollouts=True,
                      rollout_interval_s=0.2, drift_interval_s=0)
    srv = FleetServer(s, port=0, drift_evaluator=False).start()
    try:
        a = agent_factory("revoke-2", mqtt_url=BROKER_URL, fleet_id=fleet_id)
        with Session(srv.engine) as db:
            db.add(Device(id="revoke-2", fleet=fleet_id, device_class="x86-64-generic",
                          public_key=public_key_to_b64(a.device_key.public_key())))
            db.commit()
        wait_for(a.link.connected.is_set, 15, what="agent connected")
        a.install(bundles["v1"])

        def call(method: str, path: str, body: bytes, ctype: str = "application/json") -> dict:  # type: ignore[type-arg]
            req = urllib.request.Request(srv.url + path, data=body, method=method,
                                         headers={"Authorization": "Bearer adm", "Content-Type": ctype})
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())

        for b in ("v1", "v2"):
            call("POST", "/api/models", bundles[b].read_bytes(), "application/octet-stream")
        out = call("POST", "/api/models/digits/versions/2/status",
                   json.dumps({"status": "retired", "reason": "CVE"}).encode())
        doc = _keylist(fleet_keys, 1, out["revocations"])
        assert call("POST", "/api/rollouts/keys/keylist", json.dumps({"keylist": doc}).encode())["devices"] == 1
        wait_for(lambda: a.keys.version == 1, 20, what="the agent accepted key list v1")
        with pytest.raises(InstallError) as exc:
            a.install(bundles["v2"])
        assert exc.value.reason == "revoked" and a.predictor.active.installed.version == 1
    finally:
        srv.stop()
