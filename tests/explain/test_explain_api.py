"""Issue 15 item 4 from the operator's side, end to end: a real fleet server, the real Mosquitto, a
real agent process (`python -m agent run`) serving a 32-feature tabular model on its local HTTP
port, and the operator CLI (`edgefleet explain`) over the REST API, driven by docs/explainability.md's
runnable blocks as written. The request is refused with a
clear code where it cannot work (400 bad body, 403 viewer, 404 unknown device, 409 no model / not
active); otherwise the device explains its next sampled requests and the answers (attributions,
never the raw input) come back through the signed event ingest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from sqlmodel import Session

from agent.config import AgentConfig, MqttConfig, ServingConfig, TelemetryConfig
from agent.keys import generate_keypair, load_private_key, public_key_to_b64
from fleet.ingest.broker import free_port
from fleet.models import Device
from fleet.server import FleetServer
from fleet.settings import FleetSettings
from tests.docs.shell_blocks import session_script, shell_blocks
from tests.explain.tabular import HOT, N, tabular_bundle
from tests.rollouts.mqtt_world import BROKER, require_broker
from tests.rollouts.test_real_agents import AgentProc
from tests.waiting import wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "explainability.md"
TOKENS = {"op-token": "operator", "view-token": "viewer"}


def _cli(url: str, *args: str, token: str = "op-token") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    return subprocess.run([sys.executable, "-m", "edgefleet", "explain", *args, "--url", url, "--token", token],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env={**env, "PYTHONPATH": str(REPO)})


def _row() -> list[list[float]]:
    x = np.zeros((1, N), dtype=np.float32)
    x[0, HOT] = 2.0
    return x.tolist()


def _agent(tmp: Path, fleet_id: str, dev: str, fleet_pub: Path, build_pub: Path, bundle: Path,
           mqtt_url: str) -> tuple[AgentConfig, Path, int]:
    """The device's config, with the bundle installed offline (`agent install`): not started yet."""
    dkey, _ = generate_keypair(tmp / "device-keys", dev)
    port = free_port()
    cfg = AgentConfig(device_id=dev, state_dir=str(tmp / "agents" / dev), fleet_id=fleet_id, device_key=str(dkey),
                      trusted_keys=[str(fleet_pub)], build_keys=[str(build_pub)],
                      mqtt=MqttConfig(url=mqtt_url, reconnect_min_s=0.5, reconnect_max_s=2),
                      telemetry=TelemetryConfig(window_s=1.0, sample_rate=1.0), serving=ServingConfig(http_port=port))
    cfg.write(tmp / f"{dev}.toml")
    subprocess.run([sys.executable, "-m", "agent", "install", "--config", str(tmp / f"{dev}.toml"),
                    "--allow-new-name", str(bundle)], check=True, cwd=REPO, capture_output=True, timeout=120,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    return cfg, tmp / f"{dev}.toml", port


def _run_doc(url: str, dev: str, port: int, tmp: Path) -> tuple[str, Path]:
    """docs/explainability.md's runnable blocks, as written, in one bash session (tests/docs' harness)."""
    blocks = [b for b in shell_blocks(DOC) if b.run]
    assert len(blocks) == 2 and "edgefleet explain show" in blocks[0].text
    work = tmp / "user"
    work.mkdir()
    (work / "session.sh").write_text(session_script(blocks, {}, work))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(REPO),
               EDGEFLEET_URL=url, EDGEFLEET_TOKEN="op-token", DEVICE=dev, AGENT_URL=f"http://127.0.0.1:{port}",
               EDGEFLEET_PROFILE=str(tmp / "no-profile.toml"))
    res = subprocess.run(["bash", str(work / "session.sh")], cwd=work, env=env, capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout, work


def _refusals(url: str, dev: str) -> dict[str, Any]:
    op, view = {"Authorization": "Bearer op-token"}, {"Authorization": "Bearer view-token"}
    post = f"{url}/api/devices/{dev}/explain"
    return {
        "viewer": requests.post(post, json={"count": 2}, headers=view, timeout=10),
        "count0": requests.post(post, json={"count": 0}, headers=op, timeout=10),
        "count101": requests.post(post, json={"count": 101}, headers=op, timeout=10),
        "typo": requests.post(post, json={"cuont": 2}, headers=op, timeout=10),
        "rate": requests.post(post, json={"sample_rate": 0}, headers=op, timeout=10),
        "unknown": requests.post(f"{url}/api/devices/no-such-device/explain", json={}, headers=op, timeout=10),
        "no_model": requests.post(post, json={"count": 2}, headers=op, timeout=10),
        "no_request": requests.get(f"{url}/api/devices/{dev}/explanations/nope", headers=view, timeout=10),
    }


def test_operator_asks_a_real_agent_for_explanations_over_rest_and_cli(tmp_path: Path) -> None:
    require_broker()
    fleet_id = f"ex{os.getpid()}{os.urandom(2).hex()}"
    build_priv, build_pub = generate_keypair(tmp_path / "keys", "build")
    fleet_priv, fleet_pub = generate_keypair(tmp_path / "keys", "fleet")
    bundle, _ = tabular_bundle(tmp_path / "tab-v1.bundle", build_priv, names=[f"sensor_{i}" for i in range(N)])
    settings = FleetSettings(data_dir=tmp_path / "fleet", mqtt_url=f"mqtt://{BROKER[0]}:{BROKER[1]}",
                             fleet_id=fleet_id, signing_key_path=fleet_priv, embedded_broker=False,
                             trusted_build_keys=[build_pub], api_tokens=TOKENS, start_rollouts=True,
                             rollout_interval_s=0.3)
    srv = FleetServer(settings, port=0, drift_evaluator=False).start()
    url, dev, agent = srv.url, f"{fleet_id}-a0", None
    try:
        cfg, cfg_path, port = _agent(tmp_path, fleet_id, dev, fleet_pub, build_pub, bundle, settings.mqtt_url)
        with Session(srv.engine) as db:  # registered, not yet reporting: the fleet knows of no model on it
            db.add(Device(id=dev, fleet=fleet_id, device_class="x86-64-generic",
                          public_key=public_key_to_b64(load_private_key(cfg.device_key).public_key())))
            db.commit()
        got = _refusals(url, dev)
        assert got["viewer"].status_code == 403
        for case in ("count0", "count101", "typo", "rate"):
            assert got[case].status_code == 400 and got[case].json()["error"]["code"] == "invalid-request", case
        assert got["unknown"].status_code == 404 and got["unknown"].json()["error"]["code"] == "not-found"
        assert got["no_model"].status_code == 409
        assert got["no_model"].json()["error"]["code"] == "no-model-installed"
        assert got["no_request"].status_code == 404
        cli_409 = _cli(url, "request", dev, "--count", "2")
        assert cli_409.returncode == 1 and "no-model-installed" in cli_409.stderr and "Traceback" not in cli_409.stderr
        bad = _cli(url, "request", dev, "--count", "0")
        assert bad.returncode == 2 and "Traceback" not in bad.stderr

        agent = AgentProc(cfg, cfg_path)
        wait_for(lambda: agent.status().get("ready"), 90, "agent ready")

        def installed() -> bool:
            with Session(srv.engine) as db:
                return (db.get(Device, dev).installed_name or "") == "tab"
        wait_for(installed, 60, "the device's signed state names its model")

        up = requests.post(f"{url}/api/models", data=bundle.read_bytes(), timeout=30,
                           headers={"Authorization": "Bearer op-token", "Content-Type": "application/octet-stream"})
        assert up.status_code == 201, up.text
        out, work = _run_doc(url, dev, port, tmp_path)
        assert "(complete)" in out and f"sensor_{HOT}=+" in out and "2 explained, 0 failed" in out, out
        dq = json.loads(out.strip().splitlines()[-1])  # the data-quality block's curl
        assert dq["model"] == "tab" and dq["violations"] == 0  # the tab model takes tensors: no schema to break
        req = json.loads((work / "request.json").read_text())
        assert req["status"] in ("queued", "sent") and req["count"] == 2 and req["model"] == "tab"
        cid = req["command_id"]

        shown = _cli(url, "show", dev, cid, "--json")
        assert shown.returncode == 0, shown.stderr
        view = json.loads(shown.stdout)
        assert view["status"] == "complete" and view["received"] == 2 and view["failed"] == 0
        assert [e["index"] for e in view["explanations"]] == [1, 2]
        for e in view["explanations"]:
            ex = e["explanation"]
            assert ex["method"] == "occlusion" and ex["latency_ms"] > 0 and ex["model"] == "tab"
            assert [a["feature"] for a in ex["rows"][0]["attributions"]][0] == f"sensor_{HOT}"
            assert len(ex["rows"][0]["attributions"]) == 3 and ex["rows"][0]["prediction"] == 1
            assert "inputs" not in e  # raw sampling is off on this device

        with Session(srv.engine) as db:  # a decommissioned device takes no commands
            d = db.get(Device, dev)
            d.status = "decommissioned"
            db.add(d)
            db.commit()
        gone = requests.post(f"{url}/api/devices/{dev}/explain", json={}, headers={"Authorization": "Bearer op-token"},
                             timeout=10)
        assert gone.status_code == 409 and gone.json()["error"]["code"] == "device-not-active"
    finally:
        if agent is not None:
            agent.stop()
        srv.stop()


def test_openapi_documents_the_explain_routes(fleet) -> None:  # type: ignore[no-untyped-def]
    doc = fleet.client.get("/api/openapi.json", headers=fleet.h("viewer")).get_json()
    post = doc["paths"]["/api/devices/{device_id}/explain"]["post"]
    get = doc["paths"]["/api/devices/{device_id}/explanations/{command_id}"]["get"]
    assert "202" in post["responses"] and "409" in str(post.get("description", "")) + str(post["responses"])
    assert "operator" in json.dumps(post) and "viewer" in json.dumps(get)
    assert post["requestBody"]["content"]["application/json"]["schema"]


def test_explain_cli_needs_no_fleet_stack() -> None:
    """`edgefleet explain` runs on an operator's laptop: the standard library's HTTP only."""
    code = ("import sys, edgefleet.ops.explain; print(' '.join(m for m in ('fleet', 'flask', 'sqlmodel', "
            "'requests', 'numpy', 'torch') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "", res.stdout + res.stderr
