"""The operator CLI against a live fleet: upload bundles, create a rollout of a bad version, watch
it pause at the canary on the drift gate, read the verdict, roll it back; then drive a good
version by hand (approval, pause, resume, abort) and work the drift alerts it left behind."""

from __future__ import annotations

import json

import pytest

from tests.cli.conftest import VIEWER, LiveFleet, run_ok
from tests.rollouts.simdevice import Behaviour
from tests.waiting import wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]

FAST = ["--gate", "report_timeout_s=8", "--gate", "min_requests=50", "--gate", "min_drift_samples=150"]


def test_bad_version_pauses_and_is_rolled_back_through_the_cli(live_fleet: LiveFleet) -> None:
    f = live_fleet
    # models upload (several at once) and list/show
    out = run_ok(f.cli("models", "upload", str(f.bundles[1]), str(f.bundles[2]), str(f.bundles[3])))
    assert out.count("added: digits v") == 3
    assert "already present: digits v1" in run_ok(f.cli("models", "upload", str(f.bundles[1])))
    listed = run_ok(f.cli("models", "list"))
    assert listed.splitlines()[0].split() == ["NAME", "LATEST", "VERSIONS", "DEVICE", "CLASSES"]
    assert "digits" in listed and "1,2,3" in listed
    versions = json.loads(run_ok(f.cli("models", "show", "digits", "--json")))
    assert [v["version"] for v in versions["items"]] == [3, 2, 1]
    assert "accuracy" in run_ok(f.cli("models", "show", "digits", "--version", "2"))

    sims = f.start_devices(10, {2: Behaviour(drift=True)})

    # a bad version: predictions collapse onto one class
    created = json.loads(run_ok(f.cli("rollout", "create", "--model", "digits", "--version", "2", "--fleet",
                                      f.fleet_id, "--waves", "20,100", *FAST, "--json")))
    rid = str(created["id"])
    assert [w["planned"] for w in created["waves"]] == [2, 8]
    row = run_ok(f.cli("rollout", "list")).splitlines()[1].split()
    assert row[:4] == [rid, "digits-v2", "digits", "2"] and row[6] == "1"    # waves count from 1

    waited = run_ok(f.cli("rollout", "wait", rid, "--for", "paused,completed", "--wait-timeout", "60",
                          "--interval", "0.3"))
    assert f"rollout {rid} is paused (wave 1/2)" in waited and "prediction_drift" in waited
    first_wave = json.loads(run_ok(f.cli("rollout", "show", rid, "--wave", "1", "--json")))["target_list"]
    assert {t["wave"] for t in first_wave} == {0} and len(first_wave) == 2

    shown = run_ok(f.cli("rollout", "show", rid, "--targets"))
    gate_lines = [ln.split() for ln in shown.splitlines() if "prediction_drift" in ln and " fail " in f" {ln} "]
    assert gate_lines, shown
    wave, gate, status, value, *limit = gate_lines[0]
    assert (wave, gate, status, limit) == ("1", "prediction_drift", "fail", ["<=", "0.2"])
    assert float(value) > 0.2                                  # measured against the threshold
    assert "Waves" in shown and "Targets" in shown and "Devices" in shown
    detail = json.loads(run_ok(f.cli("rollout", "show", rid, "--json")))
    assert detail["status"] == "paused" and detail["waves"][0]["status"] == "failed"
    canary = {t["device_id"] for t in json.loads(run_ok(f.cli("rollout", "show", rid, "--targets", "--json")))
              ["target_list"] if t["wave"] == 0}
    assert len(canary) == 2

    # the operator rolls the whole rollout back
    out = run_ok(f.cli("rollout", "rollback", rid))
    assert f"rollout {rid} rolled back: now rolled-back" in out
    assert json.loads(run_ok(f.cli("rollout", "list", "--status", "rolled-back", "--json")))["rollouts"][0]["id"] \
        == int(rid)
    wait_for(lambda: f.count_on(1) == 10, 20, "every device back on v1")
    assert all(sims[d].installed["version"] == 1 for d in canary)
    assert all(2 not in [c["model"]["version"] for c in s.accepted if "model" in c]
               for d, s in sims.items() if d not in canary)   # wave 2 never got the bad version

    # a finished rollout cannot be approved: refused, one line, exit 1
    res = f.cli("rollout", "approve", rid)
    assert res.exit_code == 1 and res.stderr.count("\n") == 1 and "HTTP 409" in res.stderr

    # drift alerts from the canary's telemetry: evaluated by the fleet, listed and acknowledged by the CLI
    from edgefleet.ops.profile import connect

    connect(f.url, "cli-operator-token", None, None).post("/api/drift/evaluate")
    alerts = json.loads(run_ok(f.cli("alerts", "list", "--status", "open", "--json")))
    assert alerts["total"] >= 1 and all(a["version"] == 2 for a in alerts["items"])
    table = run_ok(f.cli("alerts", "list"))
    assert table.splitlines()[0].split()[:4] == ["ID", "CREATED", "LEVEL", "MODEL"]
    first = alerts["items"][0]["id"]
    assert "Evidence:" in run_ok(f.cli("alerts", "show", str(first)))
    res = f.cli("alerts", "ack", str(first), token=VIEWER)
    assert res.exit_code == 1 and "HTTP 403" in res.stderr     # a viewer may not acknowledge
    assert f"alert {first} acknowledged by" in run_ok(f.cli("alerts", "ack", str(first)))
    left = json.loads(run_ok(f.cli("alerts", "list", "--status", "open", "--json")))
    assert left["total"] == alerts["total"] - 1

    # a good version driven by hand: approval gates, pause, resume, abort
    out = run_ok(f.cli("rollout", "create", "--model", "digits", "--version", "3", "--fleet", f.fleet_id,
                       "--waves", "2d,100", "--require-approval", *FAST))
    rid3 = out.split()[2]
    assert out.startswith(f"created rollout {rid3} (digits v3, 10 devices in 2 waves)")
    run_ok(f.cli("rollout", "wait", rid3, "--for", "awaiting-approval", "--wait-timeout", "60", "--interval", "0.3"))
    assert "now paused" in run_ok(f.cli("rollout", "pause", rid3, "--reason", "change freeze"))
    assert "change freeze" in run_ok(f.cli("rollout", "show", rid3))
    assert "now running" in run_ok(f.cli("rollout", "resume", rid3))
    assert json.loads(run_ok(f.cli("rollout", "show", rid3, "--json")))["waves"][0]["status"] == "awaiting-approval"
    assert f"rollout {rid3} approved" in run_ok(f.cli("rollout", "approve", rid3))
    wait_for(lambda: f.count_on(3) == 10, 60, "wave 2 installed")
    assert "now aborted" in run_ok(f.cli("rollout", "abort", rid3))
    assert f.count_on(3) == 10                         # abort keeps what devices run

    # one call sends a version back fleet-wide (here: the eu cohort, which is every device)
    out = run_ok(f.cli("rollout", "rollback-version", "digits", "3", "--fleet", f.fleet_id, "--attr", "region=eu"))
    assert out.startswith("10 device(s) running digits v3 sent back")
    wait_for(lambda: f.count_on(1) == 10, 30, "every device back on v1 after rollback-version")
