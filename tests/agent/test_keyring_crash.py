"""kill -9 during key-list updates, repeated: the device always restarts with a consistent
keyring (the old list or the new one, never torn or mixed), and never with a lower version."""

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.keylist import make_keylist, sign_keylist
from agent.keys import key_id, load_private_key, load_public_key
from agent.trust import TrustStore

REPO = Path(__file__).resolve().parents[2]
CHILD = """
import json, sys
from agent.trust import TrustStore
ts = TrustStore(sys.argv[1], root_keys=[sys.argv[2]], fleet_keys=[sys.argv[3]], build_keys=[sys.argv[4]])
print(ts.version, flush=True)
for doc in json.load(open(sys.argv[5])):
    if doc["payload"]["version"] > ts.version:
        ts.apply_keylist(doc)
"""


@pytest.mark.slow
def test_kill_during_keylist_updates_leaves_a_consistent_keyring(tmp_path, fleet_keys) -> None:
    root = load_private_key(fleet_keys["root"])
    build = load_public_key(fleet_keys["build_pub"])
    fleet_by_version: dict[int, str] = {}
    docs = []
    for v in range(1, 401):  # each version trusts a different fleet key: a mix would show
        f = Ed25519PrivateKey.generate().public_key()
        fleet_by_version[v] = key_id(f)
        docs.append(sign_keylist(make_keylist(v, {"root": [root.public_key()], "fleet": [f], "build": [build]}),
                                 [root]))
    lists = tmp_path / "lists.json"
    lists.write_text(json.dumps(docs))
    state = tmp_path / "state"
    args = [str(state), str(fleet_keys["root_pub"]), str(fleet_keys["pub"]), str(fleet_keys["build_pub"]), str(lists)]
    rng = random.Random(12)
    seen = 0
    versions: list[int] = []
    trials = 12
    for _ in range(trials):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, *args], cwd=REPO, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        start_version = int(proc.stdout.readline())  # the child has loaded: it is writing now
        assert start_version >= seen
        time.sleep(rng.uniform(0.0, 0.05))
        proc.kill()
        proc.wait(timeout=10)
        ts = TrustStore(state, root_keys=[args[1]], fleet_keys=[args[2]], build_keys=[args[3]])
        assert ts.version >= seen, "the key list went back after a crash"
        seen = ts.version
        if ts.version:
            assert ts.ids("fleet") == [fleet_by_version[ts.version]]
            assert ts.ids("build") == [key_id(build)] and ts.ids("root") == [key_id(root)]
            on_disk = json.loads((state / "keyring.json").read_text())
            assert on_disk["keylist"]["payload"]["version"] == on_disk["version"] == ts.version
        assert not list(state.glob(".keyring.json.tmp-*"))  # the interrupted write was cleaned up
        versions.append(ts.version)
    assert len(versions) == trials and seen > 0
    assert len(set(versions)) > trials // 2, f"kills did not land during updates: {versions}"
