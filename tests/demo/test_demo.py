"""`edgefleet demo` end to end: a real fleet manager, broker, compiled models and agent
processes; v1 reaches every device, v2 is stopped at the canary by the drift gates and rolled
back, and the fleet's own database records all of it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from sqlmodel import Session, create_engine, select

from fleet.models import AuditEntry, Device
from fleet.rollouts.models import Rollout, RolloutCommand, RolloutTarget

pytestmark = [pytest.mark.slow, pytest.mark.mqtt]


def _start_demo(clone: Path) -> tuple[subprocess.Popen[str], list[str]]:
    """`edgefleet demo` as `make demo` runs it: in a fresh clone's root, no flags, no --workdir
    (issue 11: the relative .edgefleet/demo made GET /artifacts answer 500 and every install fail)."""
    import threading

    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_") and k != "DATABASE_URL"}
    env["PYTHONPATH"] = str(clone)  # the clone's code, with the project venv's libraries
    env.pop("MQTT_URL", None)  # the demo's own private broker
    proc = subprocess.Popen([sys.executable, "-m", "edgefleet", "demo"], cwd=clone, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    return proc, lines


def _console_while_up(text: str) -> None:
    """Without --once the console stays up at the printed URL, with the demo's token."""
    import re

    import requests

    url = re.search(r"open (http://127\.0\.0\.1:\d+)/console", text).group(1)
    token = re.search(r"\b(demo_[A-Za-z0-9_-]+)", text).group(1)
    s = requests.Session()
    assert s.post(f"{url}/console/login", data={"token": token}).status_code == 200
    page = s.get(f"{url}/console/rollouts").text
    assert "paused" in page and "completed" in page
    assert requests.get(f"{url}/api/devices", headers={"Authorization": f"Bearer {token}"}).json()["total"] == 6


def test_demo_reaches_the_rollback_and_keeps_the_console_up_until_interrupted(tmp_path: Path) -> None:
    """The README's `make demo` path (.ci/run runs the same with --once after the suite): v1 on
    every device, v2 stopped at the canary and rolled back, v3 stopped by online accuracy; the
    console stays up until Ctrl-C (SIGINT), which stops the fleet and every agent."""
    import re
    import signal

    from tests.doorstep.checkout import fresh_checkout
    from tests.waiting import wait_for

    clone = fresh_checkout(tmp_path / "clone")
    work = clone / ".edgefleet" / "demo"
    proc, lines = _start_demo(clone)
    try:
        wait_for(lambda: any("Ctrl-C" in x for x in lines) or proc.poll() is not None, 600, "the console to be up")
        out = "".join(lines)
        assert proc.poll() is None, out[-4000:]
        _console_while_up(out)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    out = "".join(lines)
    assert "stopping the demo" in out
    assert "automatic rollback" in out and "demo finished" in out
    assert "parity gate FAILED at compile time: feature 'pixels'" in " ".join(out.split())  # issue 15: caught first
    assert "Traceback" not in out
    assert f"working directory: {work}" in " ".join(out.split())
    # waves are numbered from 1, as in the console
    assert "wave 0" not in out and "stopped at wave 1" in out
    # the agents went with it: their local HTTP ports no longer answer
    agent_ports = [int(p) for p in re.findall(r"http_port = (\d+)", "".join(
        (work / "agents" / f).read_text() for f in os.listdir(work / "agents") if f.endswith(".toml")))]
    assert len(agent_ports) == 6
    from fleet.ingest.broker import reachable

    assert not any(reachable("127.0.0.1", p) for p in agent_ports)

    # nine signed bundles: three versions for each of the three device classes
    bundles = sorted(p.name for p in (work / "build").glob("*.bundle"))
    assert len(bundles) == 9 and {b.split("-v")[1][0] for b in bundles} == {"1", "2", "3"}
    # act three (issue 14): concept drift stopped by labels fed back on the devices, not by drift
    assert "concept drift caught" in out and "gate online_accuracy: canary accuracy" in " ".join(out.split())

    engine = create_engine(f"sqlite:///{work / 'fleet' / 'fleet.db'}")
    with Session(engine) as db:
        devices = db.exec(select(Device)).all()
        assert len(devices) == 6
        assert Counter(d.device_class for d in devices) == Counter(
            {"x86-64-generic": 2, "x86-avx512-vnni": 2, "arm64-cortex-a": 2})
        assert {d.installed_version for d in devices} == {1}        # from the devices' signed state
        r1, r2, r3 = db.exec(select(Rollout).order_by(Rollout.id)).all()
        assert r3.version == 3 and r3.status == "paused" and r3.current_wave == 0
        failed3 = {g["gate"] for g in r3.reason["gates"]}
        assert "online_accuracy" in failed3 and not failed3 & {"prediction_drift", "feature_drift"}, r3.reason
        assert (r1.version, r1.status) == (1, "completed")
        # paused by its drift gates, then aborted by the operator before v3 (one live rollout per model)
        assert r2.version == 2 and r2.status == "aborted" and r2.current_wave == 0
        failed = {g["gate"] for g in r2.reason["gates"]}
        assert failed & {"prediction_drift", "feature_drift"}, r2.reason
        targets = db.exec(select(RolloutTarget).where(RolloutTarget.rollout_id == r2.id)).all()
        canary = {t.device_id for t in targets if t.wave_index == 0}
        assert 1 <= len(canary) < len(devices)
        assert {t.status for t in targets if t.wave_index == 0} == {"rolled-back"}
        assert {t.status for t in targets if t.wave_index > 0} == {"pending"}   # never got v2
        cmds = db.exec(select(RolloutCommand).where(RolloutCommand.rollout_id == r2.id)).all()
        assert Counter(c.kind for c in cmds) == Counter({"install": len(canary), "rollback": len(canary)})
        assert {c.device_id for c in cmds} == canary
        actions = {a.action for a in db.exec(select(AuditEntry))}
        assert {"device.enrol", "model.upload", "rollout.breach"} <= actions, actions
    engine.dispose()

    # The console shows it: the rollout page names the breached gate and the rolled-back devices.
    from fleet.app import create_app
    from fleet.settings import FleetSettings

    app = create_app(FleetSettings(data_dir=work / "fleet", api_tokens={"look": "viewer"},
                                   start_rollouts=False, start_ingest=False))
    client = app.test_client()
    assert client.post("/console/login", data={"token": "look"}).status_code == 302
    page = client.get(f"/console/rollouts/{r2.id}").get_data(as_text=True)
    assert "aborted" in page and "rolled-back" in page
    assert any(g in page for g in ("prediction_drift", "feature_drift"))
    assert all(d in page for d in canary)
    listing = client.get("/console/rollouts").get_data(as_text=True)
    assert "completed" in listing and "paused" in listing
