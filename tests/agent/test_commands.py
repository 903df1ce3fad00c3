"""Signed fleet commands over the real Mosquitto: install (HTTP download), rollback, shadow,
A/B, rotate-key, telemetry-config; forged, stale and expired commands are refused."""

import base64
import time
import uuid

import numpy as np
import pytest

from agent.bundle import make_rollback_approval
from agent.keys import (
    Keyring,
    key_id,
    load_private_key,
    load_public_key,
    public_key_to_b64,
    sign_document,
    verify_document,
)
from agent.protocol import make_command, topic
from tests.agent.conftest import BROKER_URL, Subscriber, model_ref, wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]


class Fleet:
    """Just enough of a fleet manager to sign and send commands and read replies."""

    def __init__(self, fleet: str, device: str, key_path, agent) -> None:
        self.fleet, self.device = fleet, device
        self.key = load_private_key(key_path)
        self.seq = 0
        self.sub = Subscriber(BROKER_URL, f"edgefleet/v1/{fleet}/{device}/#")
        self.ring = Keyring.from_public_keys([agent.device_key.public_key()])

    def send(self, kind: str, body: dict, *, key=None, seq: int | None = None, **kw) -> str:
        if seq is None:
            self.seq += 1
            seq = self.seq
        cmd = make_command(self.device, seq, kind, body, **kw)
        doc = sign_document(cmd, key or self.key)
        import json

        self.sub.publish(topic(self.fleet, self.device, "cmd"), json.dumps(doc).encode())
        return cmd["id"]

    def events(self) -> list[dict]:
        return [verify_document(d, self.ring) for d in self.sub.payloads("/events") if "signature" in d]

    def event_for(self, cid: str, timeout: float = 30) -> dict:
        return wait_for(lambda: next((e for e in self.events() if e["command_id"] == cid), None), timeout,
                        what=f"event for command {cid}")

    def state(self) -> dict:
        st = [verify_document(d, self.ring) for d in self.sub.payloads("/state") if "signature" in d]
        return st[-1] if st else {}

    def close(self) -> None:
        import paho.mqtt.publish as publish

        publish.single(topic(self.fleet, self.device, "state"), b"", retain=True, hostname="127.0.0.1")
        self.sub.close()


@pytest.fixture
def fleet_and_agent(agent_factory, fleet_keys):
    fleet_id = f"c{uuid.uuid4().hex[:8]}"
    a = agent_factory("cmd-1", mqtt_url=BROKER_URL, fleet_id=fleet_id)
    f = Fleet(fleet_id, "cmd-1", fleet_keys["priv"], a)
    wait_for(a.link.connected.is_set, 15, what="agent connected")
    time.sleep(0.3)
    yield f, a
    f.close()


def test_install_rollback_and_refusals(fleet_and_agent, bundles, bundle_server, fleet_keys, digits) -> None:
    f, a = fleet_and_agent
    ring = a.keys.build
    cid = f.send("install", {"model": model_ref(bundles["v1"], bundle_server.url, ring)})
    assert f.event_for(cid)["kind"] == "install-ok"
    cid = f.send("install", {"model": model_ref(bundles["v2"], bundle_server.url, ring)})
    assert f.event_for(cid)["kind"] == "install-ok"
    wait_for(lambda: f.state().get("installed", {}).get("version") == 2
             and (f.state().get("last_command") or {}).get("id") == cid, 10, what="state shows v2 and the command")
    st = f.state()
    assert st["previous"]["version"] == 1 and st["last_command"] == {"id": cid, "kind": "install", "result": "ok",
                                                                      "reason": None}
    assert a.predict(digits[0][:2])["logits"].shape == (2, 10)

    # forged: signed by a key the device does not trust
    cid = f.send("install", {"model": model_ref(bundles["v3"], bundle_server.url, ring)},
                 key=load_private_key(fleet_keys["rogue"]))
    ev = f.event_for(cid)
    assert ev["kind"] == "command-refused" and ev["details"]["code"] == "bad-signature"
    # stale: a sequence number already used
    cid = f.send("install", {"model": model_ref(bundles["v3"], bundle_server.url, ring)}, seq=1)
    assert f.event_for(cid)["details"]["code"] == "stale"
    # expired
    cid = f.send("install", {"model": model_ref(bundles["v3"], bundle_server.url, ring)},
                 now=time.time() - 7200, ttl_s=60)
    assert f.event_for(cid)["details"]["code"] == "expired"
    assert a.predictor.active.version == 2

    # rollback without approval is refused; with a fleet-signed approval it is instant
    prev = a.predictor.previous
    cid = f.send("rollback", {"model": model_ref(bundles["v1"], bundle_server.url, ring)})
    wait_for(lambda: (f.state().get("last_command") or {}).get("id") == cid, 15, what="rollback refused")
    assert f.state()["last_command"]["result"] == "refused" and a.predictor.active.version == 2
    assert f.event_for(cid)["kind"] == "command-refused"
    # an approval signed by an untrusted key does not help either
    forged = make_rollback_approval(load_private_key(fleet_keys["rogue"]), "digits", 1, prev.installed.manifest_sha256)
    cid = f.send("rollback", {"model": model_ref(bundles["v1"], bundle_server.url, ring),
                              "rollback_approval": forged.document})
    assert f.event_for(cid)["kind"] == "command-refused" and a.predictor.active.version == 2
    approval = make_rollback_approval(f.key, "digits", 1, prev.installed.manifest_sha256)
    n_downloads = len(bundle_server.ranges)
    cid = f.send("rollback", {"model": model_ref(bundles["v1"], bundle_server.url, ring),
                              "rollback_approval": approval.document})
    wait_for(lambda: (f.state().get("last_command") or {}).get("id") == cid, 15, what="rollback")
    assert f.state()["last_command"]["result"] == "rolled-back" and a.predictor.active.version == 1
    assert f.state()["installed"]["version"] == 1
    assert len(bundle_server.ranges) == n_downloads  # the loaded previous model was reused, no download


def test_relative_url_uses_fleet_url(agent_factory, fleet_keys, bundles, bundle_server) -> None:
    fleet_id = f"u{uuid.uuid4().hex[:8]}"
    a = agent_factory("rel-1", mqtt_url=BROKER_URL, fleet_id=fleet_id, fleet_url=bundle_server.url + "/")
    f = Fleet(fleet_id, "rel-1", fleet_keys["priv"], a)
    try:
        wait_for(a.link.connected.is_set, 15, what="agent connected")
        ref = model_ref(bundles["v1"], bundle_server.url, a.keys.build)
        ref["url"] = bundles["v1"].name  # relative to fleet_url
        cid = f.send("install", {"model": ref})
        assert f.event_for(cid)["kind"] == "install-ok" and a.predictor.active.version == 1
    finally:
        f.close()


def test_tampered_download_refused(fleet_and_agent, bundles, bundle_server, tmp_path) -> None:
    f, a = fleet_and_agent
    ref = model_ref(bundles["v1"], bundle_server.url, a.keys.build)
    bad = tmp_path / "evil.bundle"
    data = bytearray(bundles["v1"].read_bytes())
    data[-3000] ^= 0xFF
    bad.write_bytes(bytes(data))
    bundle_server.files[bad.name] = bad
    import hashlib

    # The command's digest matches the tampered file, so only the bundle signature check can catch it.
    ref.update(url=f"{bundle_server.url}/{bad.name}", bundle_sha256=hashlib.sha256(bytes(data)).hexdigest())
    cid = f.send("install", {"model": ref})
    ev = f.event_for(cid)
    assert ev["kind"] == "bundle-refused" and a.predictor.active is None


def test_shadow_ab_and_telemetry_config(fleet_and_agent, bundles, bundle_server, digits) -> None:
    f, a = fleet_and_agent
    ring = a.keys.build
    a.install(bundles["v1"])
    cid = f.send("shadow", {"model": model_ref(bundles["v2"], bundle_server.url, ring), "fraction": 1.0})
    wait_for(lambda: a.predictor.candidate is not None, 20, what="shadow candidate")
    x = digits[0][:40]
    outs = [a.predict(x[i:i + 4])["logits"] for i in range(0, 40, 4)]
    np.testing.assert_allclose(np.concatenate(outs), a.predictor.active.run({"x": x})[0], rtol=1e-5)  # v1 answers
    payloads = a.flush_telemetry()
    shadow = next(p for p in payloads if p["model"]["role"] == "shadow")
    active = next(p for p in payloads if p["model"]["role"] == "active")
    assert active["requests"] == 10 and active["model"]["version"] == 1
    assert shadow["model"]["version"] == 2 and shadow["shadow"]["compared"] == 40
    v1 = a.predictor.active.run({"x": x})[0].argmax(1)
    v2 = a.predictor.candidate.model.run({"x": x})[0].argmax(1)
    assert shadow["shadow"]["agreed"] == int((v1 == v2).sum()) and shadow["shadow"]["active_version"] == 1
    assert (f.state().get("candidate") or {}).get("mode") in ("shadow", None)

    cid = f.send("ab", {"model": model_ref(bundles["v2"], bundle_server.url, ring), "share": 1.0})
    wait_for(lambda: a.predictor.candidate is not None and a.predictor.candidate.mode == "ab", 20, what="A/B")
    y = a.predict(x)["logits"]
    np.testing.assert_allclose(y, a.predictor.candidate.model.run({"x": x})[0], rtol=1e-5)  # v2 answered
    payloads = a.flush_telemetry()
    assert next(p for p in payloads if p["model"]["role"] == "ab")["requests"] == 1

    cid = f.send("stop-candidate", {})
    wait_for(lambda: a.predictor.candidate is None, 10, what="candidate stopped")
    cid = f.send("telemetry-config", {"window_s": 5, "sample_rate": 0.5})
    wait_for(lambda: a.telemetry.window_s == 5 and a.telemetry.sample_rate == 0.5, 10, what="telemetry config")
    import json

    assert json.loads((a.state_dir / "telemetry.json").read_text()) == {"window_s": 5.0, "sample_rate": 0.5}
    del cid


def test_rotate_key(fleet_and_agent, fleet_keys, config_factory) -> None:
    """Fleet keys change only through a signed key list (root-signed, higher version)."""
    from agent.keylist import make_keylist, sign_keylist

    f, a = fleet_and_agent
    new_pub = load_public_key(fleet_keys["pub2"])
    old_id = key_id(f.key)
    keys = {"root": [load_public_key(fleet_keys["root_pub"])], "fleet": [new_pub],
            "build": [load_public_key(fleet_keys["build_pub"])]}
    # the old bare form (no signed key list) is refused even when a trusted fleet key signs it
    cid = f.send("rotate-key", {"new_key": public_key_to_b64(new_pub), "retire": old_id})
    assert f.event_for(cid)["details"]["code"] == "keylist-unsigned-rotation"
    # a key list signed by an untrusted key is refused
    rogue_list = sign_keylist(make_keylist(1, keys), [load_private_key(fleet_keys["rogue"])])
    cid = f.send("rotate-key", {"keylist": rogue_list})
    assert f.event_for(cid)["details"]["code"] == "keylist-untrusted"
    assert a.keys.ids() == [old_id]
    # signed by the pinned root: the new fleet key replaces the old one
    v1 = sign_keylist(make_keylist(1, keys), [load_private_key(fleet_keys["root"])])
    cid = f.send("rotate-key", {"keylist": v1})
    wait_for(lambda: a.keys.ids() == [key_id(new_pub)], 10, what="new key trusted")
    assert a.keys.version == 1
    # commands signed with the new key are accepted; the old key is now refused
    new_priv = load_private_key(fleet_keys["priv2"])
    cid = f.send("telemetry-config", {"sample_rate": 0.25}, key=new_priv)
    wait_for(lambda: a.telemetry.sample_rate == 0.25, 10, what="command signed by new key")
    cid = f.send("telemetry-config", {"sample_rate": 0.75})
    assert f.event_for(cid)["kind"] == "command-refused"
    # the same list again (version not higher) is refused: no replay of an old list
    cid = f.send("rotate-key", {"keylist": v1}, key=new_priv)
    assert f.event_for(cid)["details"]["code"] == "keylist-stale"
    # persisted: a restarted agent with the same state dir (config still lists the old key) keeps the rotation
    from agent.trust import TrustStore

    fk = TrustStore(a.state_dir, root_keys=a.cfg.root_keys, fleet_keys=a.cfg.trusted_keys,
                    build_keys=a.cfg.build_keys)
    assert fk.ids() == [key_id(new_pub)] and fk.version == 1
    assert fk.ids("build") == [key_id(load_public_key(fleet_keys["build_pub"]))]
    assert base64.b64decode(public_key_to_b64(fk.fleet.keys[key_id(new_pub)]))
