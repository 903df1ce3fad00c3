"""Issue 16 through the CLI against a live fleet server: owner at upload and changed with a
reason; deprecate (rollouts refused without --allow-deprecated, warned with it), retire (refused
always, 409), move-off, and the revocation list signed into the next key list."""

from __future__ import annotations

import json
import time

from sqlmodel import Session

from agent.keylist import parse_keylist
from agent.keys import generate_keypair
from fleet.catalogue import reviews
from fleet.models import Device
from tests.cli.conftest import run_ok


def test_lifecycle_cli(live_fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = live_fleet
    out = run_ok(f.cli("models", "upload", str(f.bundles[1]), str(f.bundles[2]), str(f.bundles[3]),
                       "--owner-team", "vision", "--owner-contact", "vision@example.com", "--oncall", "pd:vision"))
    assert out.count("added:") == 3
    assert "Team:     vision" in run_ok(f.cli("models", "owner", "digits"))
    res = f.cli("models", "owner", "digits", "--team", "edge-ml")
    assert res.exit_code == 2 and "--reason" in res.output
    out = run_ok(f.cli("models", "owner", "digits", "--team", "edge-ml", "--reason", "reorg", "--json"))
    assert json.loads(out)["team"] == "edge-ml" and json.loads(out)["oncall"] == "pd:vision"
    with Session(f.server.engine) as db:
        for i in range(2):
            db.add(Device(id=f"{f.fleet_id}-lc{i}", fleet=f.fleet_id, device_class="x86-64-generic",
                          installed_name="digits", installed_version=2))
        db.commit()

    assert "warning" in run_ok(f.cli("models", "deprecate", "digits", "2", "--reason", "slow on arm"))
    rollout = ("rollout", "create", "--model", "digits", "--version", "2", "--fleet", f.fleet_id, "--waves", "100")
    res = f.cli(*rollout)
    assert res.exit_code == 1 and "HTTP 409" in res.stderr and "deprecated" in res.stderr
    res = f.cli(*rollout, "--allow-deprecated")
    assert res.exit_code == 0, res.output
    assert "warning: digits v2 is deprecated: slow on arm" in res.stderr
    rid = res.stdout.split()[2]
    run_ok(f.cli("rollout", "abort", rid))
    show = run_ok(f.cli("models", "show", "digits"))
    assert "deprecated" in show and "warning: v2 is deprecated" in show

    out = run_ok(f.cli("models", "retire", "digits", "2", "--reason", "CVE-2026-1"))
    assert "retired" in out and "move-off" in out
    res = f.cli(*rollout, "--allow-deprecated")
    assert res.exit_code == 1 and "HTTP 409" in res.stderr and "retired" in res.stderr
    res = f.cli("models", "reactivate", "digits", "2", "--reason", "oops")
    assert res.exit_code == 1 and "retired is final" in res.stderr
    assert "retired" in run_ok(f.cli("models", "status", "digits", "2"))
    out = run_ok(f.cli("models", "move-off", "digits", "2", "--fleet", f.fleet_id))
    assert "digits v3 to 2 devices still on v2" in out

    out = run_ok(f.cli("models", "decommission", "digits", "--version", "2", "--device-class", "x86-64-generic",
                       "--reason", "end of life", "--fleet", f.fleet_id, "--json"))
    body = json.loads(out)
    assert sorted(body["devices"]) == [f"{f.fleet_id}-lc0", f"{f.fleet_id}-lc1"] and len(body["commands"]) == 2
    assert body["kept_artifacts"] and body["purged_artifacts"] == []
    assert f.cli("models", "decommission", "digits").exit_code == 2  # --reason is required

    # an overdue review is an open alert in `edgefleet alerts list`; the recorded review closes it
    with Session(f.server.engine) as db:
        assert [s.name for s in reviews.check_overdue(db, time.time() + 91 * 86400.0)] == ["digits"]
        db.commit()
    listed = json.loads(run_ok(f.cli("alerts", "list", "--status", "open", "--model", "digits", "--json")))["items"]
    assert [(a["reference"], a["version"]) for a in listed] == [("review:digits", 3)]
    assert "review:digits" in run_ok(f.cli("alerts", "list", "--status", "open"))
    out = run_ok(f.cli("models", "review", "digits", "--decision", "keep", "--notes", "field metrics fine"))
    assert "review" in out and "keep" in out
    assert json.loads(run_ok(f.cli("alerts", "list", "--status", "open", "--model", "digits", "--json")))["items"] == []
    assert "field metrics fine" in run_ok(f.cli("models", "reviews", "digits"))
    hist = run_ok(f.cli("models", "history", "digits"))
    for action in ("model.upload", "model.owner", "model.deprecated", "model.retired", "model.decommission",
                   "model.review"):
        assert action in hist
    assert "CVE-2026-1" in hist

    md = run_ok(f.cli("models", "card", "digits", "2"))
    assert "# Model card: digits v2" in md and "**Status:** retired — CVE-2026-1" in md and "field metrics fine" in md
    run_ok(f.cli("models", "card", "digits", "3", "--out", str(tmp_path / "card.md")))
    assert "Owner: edge-ml (vision@example.com)" in (tmp_path / "card.md").read_text()

    # the revocation travels in the next root-signed key list
    run_ok(f.cli("models", "revocations", "--out", str(tmp_path / "revoked.json")))
    keys = {r: generate_keypair(tmp_path / "kl", r) for r in ("root", "fleet")}
    run_ok(f.cli("keys", "sign-keylist", "--version", "2", "--root", str(keys["root"][1]),
                 "--fleet", str(keys["fleet"][1]), "--key", str(keys["root"][0]),
                 "--revoked", str(tmp_path / "revoked.json"), "--out", str(tmp_path / "kl.json")))
    kl = parse_keylist(json.loads((tmp_path / "kl.json").read_text()))
    assert kl.revoked == ({"model": "digits", "version": 2},) and kl.revocation("digits", 2)
