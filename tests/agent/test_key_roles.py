"""Issue 12, seen item 1: the build key commanded devices. The outside tester's sequence, against
the real agent's command handler and lifecycle: every step must be refused.

Keys: fleet (commands, approvals), build (bundles), root (key lists), attacker (nobody's)."""

import json

import pytest

from agent.bundle import build_bundle, make_rollback_approval
from agent.keylist import make_keylist, sign_keylist
from agent.keys import key_id, load_private_key, load_public_key, public_key_to_b64, sign_document
from agent.lifecycle import InstallError
from agent.protocol import make_command
from tests.agent import models
from tests.agent.conftest import wait_for


class Sender:
    """Signs commands like the fleet does and hands them to the agent's own CommandHandler."""

    def __init__(self, agent) -> None:
        self.agent, self.seq = agent, 0

    def send(self, kind: str, body: dict, key) -> dict:
        self.seq += 1
        cmd = make_command(self.agent.cfg.device_id, self.seq, kind, body)
        self.agent.commands.receive(json.dumps(sign_document(cmd, key)).encode())
        return wait_for(lambda: _answer(self.agent.commands, cmd["id"]), 20, what=f"{kind} handled")


def _answer(commands, cid: str) -> dict | None:
    """The signed answer for a verified command, or the unverified refusal kept apart from it."""
    last = commands.last_command or {}
    if last.get("id") == cid and last.get("result") not in (None, "queued"):
        return last
    unverified = commands.last_unverified or {}
    return unverified if unverified.get("id") == cid else None


@pytest.fixture
def keys(fleet_keys, tmp_path):
    from agent.keys import generate_keypair

    attacker, attacker_pub = generate_keypair(tmp_path / "attacker", "attacker")
    return {"fleet": load_private_key(fleet_keys["priv"]), "build": load_private_key(fleet_keys["build"]),
            "root": load_private_key(fleet_keys["root"]), "attacker": load_private_key(attacker),
            "attacker_pub": load_public_key(attacker_pub)}


def _refused(res: dict) -> bool:
    return res["result"] == "refused"


def test_build_key_cannot_command_rotate_or_approve(agent_factory, bundles, keys) -> None:
    a = agent_factory("roles-1", window_s=60, sample_rate=1.0)
    a.install(bundles["v1"])
    a.install(bundles["v2"])
    s = Sender(a)
    ring_before = (a.state_dir / "keyring.json").read_bytes()
    attacker_id = key_id(keys["attacker"])

    # 1. telemetry-config signed by the build key
    res = s.send("telemetry-config", {"window_s": 5, "sample_rate": 0.5}, keys["build"])
    assert _refused(res) and res["reason"] == "bad-signature"
    assert (a.telemetry.window_s, a.telemetry.sample_rate) == (60, 1.0)

    # 2. rotate-key adding the attacker's key, signed by the build key: the old bare form...
    res = s.send("rotate-key", {"new_key": public_key_to_b64(keys["attacker_pub"]), "retire": None}, keys["build"])
    assert _refused(res)
    # ...a key list signed by the build key inside a build-signed command...
    rogue_list = sign_keylist(make_keylist(7, {"root": [keys["root"].public_key()],
                                               "fleet": [keys["attacker_pub"]],
                                               "build": [keys["build"].public_key()]}), [keys["build"]])
    assert _refused(s.send("rotate-key", {"keylist": rogue_list}, keys["build"]))
    # ...and even inside a genuine fleet-signed command: build signatures never change the keys
    res = s.send("rotate-key", {"keylist": rogue_list}, keys["fleet"])
    assert _refused(res) and "keylist-refused" in res["reason"]
    assert all(attacker_id not in a.keys.ids(r) for r in ("root", "fleet", "build"))
    assert (a.state_dir / "keyring.json").read_bytes() == ring_before

    # 3. rollback to v1 with an approval, both signed by the build key
    prev = a.predictor.previous
    approval = make_rollback_approval(keys["build"], "digits", 1, prev.installed.manifest_sha256)
    model = {"name": "digits", "version": 1, "manifest_sha256": prev.installed.manifest_sha256,
             "bundle_sha256": prev.installed.bundle_sha256, "url": "http://127.0.0.1:9/none"}
    res = s.send("rollback", {"model": model, "rollback_approval": approval.document}, keys["build"])
    assert _refused(res) and res["reason"] == "bad-signature"
    # a genuine fleet command carrying a build-signed approval is refused as well
    res = s.send("rollback", {"model": model, "rollback_approval": approval.document}, keys["fleet"])
    assert _refused(res) and a.predictor.active.version == 2
    # the local API: a build-signed approval does not get v1 past anti-rollback either
    with pytest.raises(InstallError, match="downgrade"):
        a.install(bundles["v1"], approval)
    assert a.predictor.active.version == 2

    # 4. a command signed by the attacker's key
    res = s.send("telemetry-config", {"sample_rate": 0.1}, keys["attacker"])
    assert _refused(res) and res["reason"] == "bad-signature"
    assert (a.telemetry.window_s, a.telemetry.sample_rate) == (60, 1.0)

    # the same steps with the fleet key work: the refusals above were about the role, not the form
    res = s.send("telemetry-config", {"sample_rate": 0.5}, keys["fleet"])
    assert res["result"] == "ok" and a.telemetry.sample_rate == 0.5
    good = make_rollback_approval(keys["fleet"], "digits", 1, prev.installed.manifest_sha256)
    res = s.send("rollback", {"model": model, "rollback_approval": good.document}, keys["fleet"])
    assert res["result"] == "rolled-back" and a.predictor.active.version == 1


def test_bundles_verify_only_against_build_keys(agent_factory, model_files, keys, tmp_path) -> None:
    """A bundle signed by the fleet key (or the root key) is refused: fleet keys command, they do
    not build."""
    a = agent_factory("roles-2")
    mf = model_files
    for role in ("fleet", "root"):
        out = tmp_path / f"{role}-signed.bundle"
        build_bundle(out, {"model.onnx": mf["onnx_v1"]}, models.manifest_fields(9, "onnx", "model.onnx",
                                                                                 mf["baseline_v1"]), keys[role])
        with pytest.raises(InstallError, match="unknown-key"):
            a.install(out)
    assert a.predictor.active is None


def test_key_in_two_roles_is_refused_with_a_hint(config_factory, fleet_keys) -> None:
    from agent.config import ConfigError
    from agent.daemon import Agent

    cfg = config_factory("roles-3", build_keys=[str(fleet_keys["pub"])])
    with pytest.raises(ConfigError, match="both fleet and build.*re-enrol"):
        Agent(cfg)


def test_old_keyring_migrates_by_source(tmp_path, fleet_keys) -> None:
    """A keyring.json from before roles: keys the old enrol wrote as build-N.pub become build keys,
    the rest fleet keys; a key a rotate-key once added stays a fleet key; retired keys stay out;
    no root is pinned, so key lists are refused until re-enrolment."""
    import shutil

    from agent.keylist import KeyListError
    from agent.keys import Keyring
    from agent.trust import TrustStore

    trust = tmp_path / "state" / "trust"
    trust.mkdir(parents=True)
    shutil.copy(fleet_keys["pub"], trust / "fleet-0.pub")
    shutil.copy(fleet_keys["build_pub"], trust / "build-0.pub")
    fleet2, retired = load_public_key(fleet_keys["pub2"]), load_public_key(fleet_keys["rogue_pub"])
    legacy = Keyring.from_files([trust / "fleet-0.pub", trust / "build-0.pub"])
    legacy.add(fleet2)
    (tmp_path / "state" / "keyring.json").write_text(json.dumps({"keys": legacy.to_dict(),
                                                                 "retired": [key_id(retired)]}))
    ts = TrustStore(tmp_path / "state", fleet_keys=[str(trust / "fleet-0.pub"), str(trust / "build-0.pub")])
    fleet_id = key_id(load_public_key(fleet_keys["pub"]))
    assert ts.ids("fleet") == sorted([fleet_id, key_id(fleet2)])
    assert ts.ids("build") == [key_id(load_public_key(fleet_keys["build_pub"]))]
    assert ts.ids("root") == [] and ts.version == 0
    doc = sign_keylist(make_keylist(1, {"root": [load_public_key(fleet_keys["root_pub"])],
                                        "fleet": [fleet2]}), [load_private_key(fleet_keys["root"])])
    with pytest.raises(KeyListError, match="none is pinned"):
        ts.apply_keylist(doc)
    again = TrustStore(tmp_path / "state", fleet_keys=[str(trust / "fleet-0.pub"), str(trust / "build-0.pub")])
    assert again.ids("fleet") == ts.ids("fleet") and again.ids("build") == ts.ids("build")
