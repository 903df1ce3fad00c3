"""Issue 15 item 4, fleet side: the fleet queues a signed `explain` command (its real command path,
fleet/drift/explain_requests.py); the agent explains the next sampled requests with its own runtime and
answers with `explanation` events that carry attributions only. A forged command arms nothing."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
from sqlmodel import Session

from agent.keys import generate_keypair, load_private_key, sign_document
from fleet.db import init_db, make_engine
from fleet.drift.explain_requests import explanations, request_explanations
from fleet.models import Device, DeviceEvent
from fleet.rollouts.commands import FleetSigner
from tests.agent.conftest import wait_for
from tests.explain.tabular import HOT, tabular_bundle


def _crafted() -> np.ndarray:
    x = np.zeros((1, 32), dtype=np.float32)
    x[0, HOT] = 2.0
    return x


def test_signed_explain_command_explains_sampled_requests_and_a_forged_one_is_refused(
        agent_factory, fleet_keys, tmp_path: Path) -> None:
    bundle, _ = tabular_bundle(tmp_path / "tab-v1.bundle", fleet_keys["build"],
                               names=[f"sensor_{i}" for i in range(32)])
    a = agent_factory("explain-cmd-1")
    a.install(bundle)
    events: list[dict] = []
    a.explain_requests._emit = lambda kind, **kw: events.append({"kind": kind, **kw})

    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    init_db(engine)
    with Session(engine) as s:
        device = Device(id=a.cfg.device_id, device_class=a.device_class.name)
        s.add(device)
        s.commit()
        row = request_explanations(s, device, FleetSigner(load_private_key(fleet_keys["priv"])), count=2, top_k=3)
        s.commit()
        signed, cid = row.document, row.command_id

    # a forged copy (an attacker's key, a higher count) arms nothing
    attacker, _ = generate_keypair(tmp_path / "attacker", "attacker")
    forged_payload = copy.deepcopy(signed["payload"])
    forged_payload["count"] = 100
    a.commands.receive(json.dumps(sign_document(forged_payload, load_private_key(attacker))).encode())
    assert a.commands.refused_unverified()["last"]["kind"] == "explain"
    assert a.explain_requests.remaining == 0
    a.predict({"x": _crafted()})
    assert events == []

    # the genuine command: the next two requests are explained, the third is not
    a.commands.receive(json.dumps(signed).encode())
    wait_for(lambda: (a.commands.last_command or {}).get("result") == "ok", 30, what="explain command accepted")
    a.predict({"x": _crafted()})
    a.predict({"x": _crafted().tolist()})  # nested lists (as the local server's JSON hands them over)
    a.predict({"x": _crafted()})
    wait_for(lambda: len(events) >= 2, 30, what="two explanation events")
    assert a.explain_requests.remaining == 0
    assert [e["details"]["index"] for e in events] == [1, 2]
    for e in events:
        assert e["kind"] == "explanation" and e["command_id"] == cid
        ex = e["details"]["explanation"]
        assert ex["rows"][0]["attributions"][0]["feature"] == f"sensor_{HOT}"
        assert len(ex["rows"][0]["attributions"]) == 3 and ex["latency_ms"] > 0
        assert "inputs" not in e["details"]  # raw sampling is off on this device

    # the fleet reads them back from its event table
    with Session(engine) as s:
        for i, e in enumerate(events):
            s.add(DeviceEvent(device_id=a.cfg.device_id, seq=i + 1, time=1.0 + i, kind=e["kind"],
                              command_id=e["command_id"], reason=e["reason"], details=e["details"]))
        s.commit()
        got = explanations(s, a.cfg.device_id, cid)
    assert len(got) == 2 and got[0]["explanation"]["method"] == "occlusion"
    engine.dispose()
