"""A forged copy of a real command (same id; bad or missing signature, or signed by a key outside
the fleet role) must not change the device's signed answer for that id, and the fleet must not
count its refusal as the device's answer: anyone who can publish on a device's command topic
could otherwise roll a good version back. Real agent code (CommandHandler, lifecycle, state
payload) and the fleet's real evidence functions."""

import copy
import json

import pytest
from sqlmodel import Session, select

from agent.keys import generate_keypair, load_private_key, sign_document
from agent.protocol import make_command
from fleet.db import init_db, make_engine
from fleet.models import AuditEntry, Device, DeviceEvent
from fleet.rollouts.evidence import (
    UNVERIFIED_ACTION,
    EvidenceQuery,
    candidate_loaded,
    device_failure,
    note_unverified,
)
from fleet.rollouts.models import RolloutTarget
from tests.agent.conftest import model_ref, wait_for


def _forgeries(signed: dict, attacker) -> dict[str, dict]:
    """Copies of a genuine signed command under its id, as an attacker on the topic could make."""
    unsigned = copy.deepcopy(signed)
    unsigned.pop("signature")
    tampered = copy.deepcopy(signed)
    tampered["payload"]["kind"] = "rollback"          # the fleet's signature no longer matches
    return {"untrusted-key": sign_document(copy.deepcopy(signed["payload"]), attacker),
            "no-signature": unsigned, "bad-signature": tampered}


def test_forged_copy_of_an_accepted_install_changes_nothing(agent_factory, bundles, bundle_server, fleet_keys,
                                                            tmp_path) -> None:
    a = agent_factory("forge-1")
    events: list[dict] = []
    real_emit = a.emit_event   # the agent is the command handler's Reporter
    a.emit_event = lambda kind, **kw: (events.append({"kind": kind, **kw}), real_emit(kind, **kw))

    fleet = load_private_key(fleet_keys["priv"])
    cmd = make_command(a.cfg.device_id, 1, "install", {"model": model_ref(bundles["v1"], bundle_server.url,
                                                                          a.keys.build)})
    signed = sign_document(cmd, fleet)
    a.commands.receive(json.dumps(signed).encode())
    wait_for(lambda: (a.commands.last_command or {}).get("result") == "ok", 30, what="install ok")
    answer = dict(a.commands.last_command)
    saved = (a.state_dir / "commands.json").read_bytes()
    assert answer == {"id": cmd["id"], "kind": "install", "result": "ok", "reason": None}

    attacker, _ = generate_keypair(tmp_path / "attacker", "attacker")
    forged = _forgeries(signed, load_private_key(attacker))
    for doc in forged.values():
        a.commands.receive(json.dumps(doc).encode())

    # the device's signed state for that command id still reads the install's result
    assert a.commands.last_command == answer
    assert a.commands._answers[cmd["id"]] == answer
    assert (a.state_dir / "commands.json").read_bytes() == saved
    state = a._state_payload()
    assert state["last_command"] == answer and state["installed"]["version"] == 1
    assert state["refused_unverified"]["count"] == 3
    assert a.status()["refused_unverified"]["last"]["id"] == cmd["id"]
    assert a.predictor.active.version == 1
    # ... and each forgery was reported, marked unverified, with why
    refused = [e for e in events if e["kind"] == "command-refused"]
    assert [e["details"]["signature"] for e in refused] == list(forged)
    assert all(e["details"]["unverified"] and e["command_id"] == cmd["id"] for e in refused)

    # a genuine redelivery of the real command is still answered with the original result
    a.commands.receive(json.dumps(signed).encode())
    assert events[-1]["kind"] == "command-duplicate" and events[-1]["details"]["result"] == "ok"

    # the fleet's evidence for that target: still a success, and the forgery is audited once
    installed = state["installed"]
    device = Device(id=a.cfg.device_id, device_class=state["device_class"], state=state,
                    installed_name=installed["name"], installed_version=installed["version"],
                    installed_manifest_sha256=installed["manifest_sha256"])
    target = RolloutTarget(rollout_id=1, wave_index=0, device_id=device.id, command_id=cmd["id"])
    rows = [DeviceEvent(device_id=device.id, seq=i, time=1.0 + i, kind=e["kind"], command_id=e["command_id"],
                        reason=e["reason"], details=e["details"]) for i, e in enumerate(events)]
    assert device_failure(device, target, {device.id: rows}) is None
    q = EvidenceQuery("digits", 1, {}, "install", 0.0, None)
    assert candidate_loaded(device, q)

    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    init_db(engine)
    with Session(engine) as s:
        noted = [note_unverified(s, ev) for ev in rows if ev.kind == "command-refused"]
        s.commit()
        audit = s.exec(select(AuditEntry).where(AuditEntry.action == UNVERIFIED_ACTION)).all()
    assert noted == [True, False, False] and len(audit) == 1
    assert audit[0].target == f"device:{device.id}/command:{cmd['id']}"
    engine.dispose()


@pytest.mark.parametrize("code", ["bad-signature", "unknown-key"])
def test_an_old_agents_signature_refusal_is_not_a_failure(code) -> None:
    """Agents before this fix overwrote last_command with the refusal: the fleet still does not
    count it as the device's answer to a command it signed."""
    device = Device(id="d1", state={"last_command": {"id": "c1", "kind": "install", "result": "refused",
                                                     "reason": code}})
    target = RolloutTarget(rollout_id=1, wave_index=0, device_id="d1", command_id="c1")
    ev = DeviceEvent(device_id="d1", seq=1, time=1.0, kind="command-refused", command_id="c1",
                     reason=f"{code}: no", details={"code": code})
    assert device_failure(device, target, {"d1": [ev]}) is None
    # a refusal of a verified command (e.g. a downgrade) is still a failure
    ev2 = DeviceEvent(device_id="d1", seq=2, time=2.0, kind="command-refused", command_id="c1",
                      reason="downgrade: no approval", details={"code": "downgrade"})
    assert device_failure(Device(id="d1", state={}), target, {"d1": [ev2]}) == "command-refused"
