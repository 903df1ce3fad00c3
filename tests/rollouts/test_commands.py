from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, select

from agent.bundle import RollbackApproval
from agent.keylist import make_keylist, sign_keylist
from agent.keys import Keyring, generate_keypair, key_id, load_private_key, sign_document
from agent.protocol import CommandGuard, ProtocolError
from fleet.models import AuditEntry, Device
from fleet.rollouts import commands, keyrotation
from fleet.rollouts.models import FleetKey, RolloutCommand
from tests.rollouts.harness import Harness


@pytest.fixture
def fleet(engine, tmp_path):
    return Harness(engine, tmp_path, n_devices=3)


def queue(fleet: Harness, dev: str, kind: str = "stop-candidate", body=None) -> RolloutCommand:
    with Session(fleet.engine, expire_on_commit=False) as s:
        row = commands.queue_command(s, s.get(Device, dev), kind, body or {}, fleet.signer)
        s.commit()
    return row


def test_commands_get_increasing_seqs_and_verify_on_the_agent(fleet):
    rows = [queue(fleet, "dev-0000") for _ in range(3)]
    assert [r.seq for r in rows] == [1, 2, 3]
    assert fleet.device("dev-0000").command_seq == 3
    guard = CommandGuard("dev-0000", Keyring.from_public_keys([fleet.fleet_key.public_key()]))
    for r in rows:
        assert guard.check(r.document)["seq"] == r.seq
    # the same signed command again is a replay
    with pytest.raises(ProtocolError) as exc:
        guard.check(rows[1].document)
    assert exc.value.reason == "stale"


def test_forged_replayed_and_misaddressed_commands_are_refused_by_the_device(fleet):
    sim = fleet.sims["dev-0001"]
    good = queue(fleet, "dev-0001", "install", {"model": {"name": "digits", "version": 9, "manifest_sha256": "x",
                                                          "bundle_sha256": "y", "size": 1, "url": "u"}})
    forged = sign_document({**good.document["payload"], "seq": 99}, Ed25519PrivateKey.generate())
    tampered = {"payload": {**good.document["payload"], "seq": 100}, "signature": good.document["signature"]}
    other = queue(fleet, "dev-0002")
    sim.handle(json.dumps(forged).encode())
    sim.handle(json.dumps(tampered).encode())
    sim.handle(json.dumps(other.document).encode())
    assert sim.refused == ["bad-signature", "bad-signature", "wrong-device"]
    sim.handle(json.dumps(good.document).encode())
    sim.handle(json.dumps(good.document).encode())
    assert sim.refused[-1] == "stale" and sim.installed["version"] == 9


def test_outbox_publishes_in_order_once_and_retries_failures(fleet):
    for _ in range(3):
        queue(fleet, "dev-0000")
    failing = commands.RecordingPublisher(fail=True)
    assert commands.flush_outbox(fleet.engine, failing) == 0
    ok = commands.RecordingPublisher()
    assert commands.flush_outbox(fleet.engine, ok) == 3
    assert commands.flush_outbox(fleet.engine, ok) == 0
    assert [m[1]["payload"]["seq"] for m in ok.messages] == [1, 2, 3]
    assert ok.messages[0][0] == "edgefleet/v1/default/dev-0000/cmd"
    with Session(fleet.engine) as s:
        assert all(r.sent_at and r.attempts >= 1 for r in s.exec(select(RolloutCommand)))


def test_rollback_body_carries_an_approval_the_agent_accepts(fleet):
    mv = fleet.builds[(1, "x86-64-generic")]
    body = commands.rollback_body(mv, fleet.signer, "http://fleet.test")
    assert body["model"]["url"] == f"http://fleet.test/artifacts/{mv.bundle_sha256}"
    keyring = Keyring.from_public_keys([fleet.fleet_key.public_key()])
    RollbackApproval(body["rollback_approval"]).check(keyring, {"model": {"name": "digits", "version": 1}},
                                                      mv.manifest_sha256)


def test_key_rotation_devices_trust_the_new_key_through_the_old_one(fleet, tmp_path: Path):
    generate_keypair(tmp_path / "keys2", "fleet2")
    new_path = tmp_path / "keys2" / "fleet2.key"
    new_key = load_private_key(new_path)
    root = Ed25519PrivateKey.generate()   # kept offline by the operator; the fleet never sees it
    with Session(fleet.engine) as s:
        with pytest.raises(keyrotation.RotationError) as exc:   # no signed key list: nothing to send
            keyrotation.begin_rotation(s, fleet.signer, new_path, "admin", settings=fleet.settings, keylist=None)
        assert exc.value.code == "keylist-required"
        forged = sign_keylist(make_keylist(1, {"root": [root.public_key()], "fleet": [
            fleet.fleet_key.public_key(), new_key.public_key()]}), [fleet.fleet_key])   # not signed by root
        with pytest.raises(keyrotation.RotationError) as exc:
            keyrotation.begin_rotation(s, fleet.signer, new_path, "admin", settings=fleet.settings, keylist=forged)
        assert exc.value.code == "keylist-untrusted"
    both = sign_keylist(make_keylist(1, {"root": [root.public_key()], "fleet": [
        fleet.fleet_key.public_key(), new_key.public_key()]}), [root])
    with Session(fleet.engine) as s:
        res = keyrotation.begin_rotation(s, fleet.signer, new_path, "admin", settings=fleet.settings, keylist=both)
        s.commit()
    assert res["devices"] == 3 and res["keylist_version"] == 1
    with Session(fleet.engine) as s:
        with pytest.raises(keyrotation.RotationError) as exc:
            keyrotation.finish_rotation(s, "admin")
        assert exc.value.code == "devices-pending"
    # deliver the rotate-key commands: each is signed by the old key and carries the root-signed list
    commands.flush_outbox(fleet.engine, fleet.publisher)
    assert all(m[1]["signature"]["key_id"] == key_id(fleet.fleet_key) for m in fleet.publisher.messages)
    fleet.deliver(at=__import__("time").time())
    assert all(key_id(new_key) in sim.trusted_key_ids for sim in fleet.sims.values())
    with Session(fleet.engine) as s:
        assert keyrotation.rotation_status(s)["pending_devices"] == 0
        keyrotation.finish_rotation(s, "admin")
        s.commit()
    with Session(fleet.engine) as s:
        signer = commands.load_signer(s, fleet.key_path)
        assert signer.active_id == key_id(new_key)
        assert {k.status for k in s.exec(select(FleetKey))} == {"active", "retired"}
        assert s.exec(select(AuditEntry).where(AuditEntry.action == "fleet-key.rotate.finish")).first()
    # retire the old key on the devices: a higher-versioned list without it; a replay of v1 is refused
    with Session(fleet.engine) as s:
        with pytest.raises(keyrotation.RotationError) as exc:
            keyrotation.publish_keylist(s, signer, fleet.settings, both, "admin")
        assert exc.value.code == "keylist-stale"
        only_new_list = sign_keylist(make_keylist(2, {"root": [root.public_key()], "fleet": [new_key.public_key()]}),
                                     [root])
        assert keyrotation.publish_keylist(s, signer, fleet.settings, only_new_list, "admin")["fleet"] == [
            key_id(new_key)]
        s.commit()
    commands.flush_outbox(fleet.engine, fleet.publisher)
    fleet.deliver(at=__import__("time").time())
    assert all(sim.trusted_key_ids == [key_id(new_key)] for sim in fleet.sims.values())
    fleet.signer = signer
    row = queue(fleet, "dev-0000")
    assert row.document["signature"]["key_id"] == key_id(new_key)
    # a device that only trusts the new key refuses the old one
    only_new = CommandGuard("dev-0000", Keyring.from_public_keys([new_key.public_key()]))
    assert only_new.check(row.document)["seq"] == row.seq
    old_signed = sign_document({**row.document["payload"], "seq": row.seq + 1}, fleet.fleet_key)
    with pytest.raises(ProtocolError):
        only_new.check(old_signed)


def test_signer_uses_a_key_the_device_trusts():
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    signer = commands.FleetSigner(new, retired={key_id(old): old})
    assert signer.key_for([key_id(old)]) is old      # missed the rotation
    assert signer.key_for([key_id(new)]) is new
    assert signer.key_for(None) is new


def test_publisher_survives_a_broker_that_is_down(fleet):
    from fleet.ingest.broker import free_port

    pub = commands.MqttPublisher("127.0.0.1", free_port(), timeout_s=0.3)   # nothing listens there
    try:
        assert not pub.connected
        queue(fleet, "dev-0000")
        assert commands.flush_outbox(fleet.engine, pub) == 0           # returns at once, nothing lost
        with Session(fleet.engine) as s:
            row = s.exec(select(RolloutCommand)).one()
            assert row.sent_at is None and row.attempts == 1
    finally:
        pub.close()
