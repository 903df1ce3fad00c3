"""`edgefleet compile --profile-on CLASS` (issue 13 item 8) end to end: the real fleet server, the
real Mosquitto and one real agent process enrolled with a one-time token. The compiler posts its
candidate (signed with the build key) to the fleet, the fleet sends the agent a fleet-signed
`benchmark` command, the agent times the candidate and reports p50/p99, and the compiler gates on
the device's numbers ("measured on device <id>" in the report and the bundle's lineage). The
agent keeps serving the model it had; a forged benchmark command is refused; a class with no
device online is one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, select

from agent.bundle import build_bundle, read_manifest_unverified
from agent.keys import generate_keypair, load_private_key, sign_document
from agent.protocol import make_command
from fleet.ingest.broker import free_port
from fleet.models import Device, DeviceEvent
from fleet.server import FleetServer
from fleet.settings import FleetSettings
from tests.rollouts.mqtt_world import BROKER, require_broker
from tests.waiting import wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
CLASS = "x86-64-generic"
sys.path.insert(0, str(REPO / "tests" / "agent"))


def _events(srv: FleetServer, device: str, kind: str) -> list[DeviceEvent]:
    with Session(srv.engine) as db:
        return list(db.exec(select(DeviceEvent).where(DeviceEvent.device_id == device, DeviceEvent.kind == kind)))


def _online(srv: FleetServer, device: str) -> bool:
    with Session(srv.engine) as db:
        d = db.get(Device, device)
        return bool(d and d.online and d.installed_version == 1)


def test_compile_profile_on_a_real_enrolled_device(tmp_path: Path) -> None:
    require_broker()
    import models  # tests/agent/models.py: a tiny digits MLP as ONNX

    from agent.enrol import EnrolRequest, enrol
    from edgefleet.cli import cli

    keys = tmp_path / "keys"
    build_priv, build_pub = generate_keypair(keys, "build")
    fleet_priv, _ = generate_keypair(keys, "fleet")
    fleet_id = f"prof{os.getpid()}{int(time.time()) % 100000}"
    settings = FleetSettings(data_dir=tmp_path / "fleet", mqtt_url=f"mqtt://{BROKER[0]}:{BROKER[1]}",
                             fleet_id=fleet_id, signing_key_path=fleet_priv, trusted_build_keys=[build_pub],
                             api_tokens={"op": "operator"}, embedded_broker=False, start_rollouts=True,
                             rollout_interval_s=0.3)
    srv = FleetServer(settings, port=0, drift_evaluator=False).start()
    proc = None
    try:
        # a small model: the ONNX to compile, and v1 (the same weights) installed on the device
        weights = models.mlp_weights(models.train_mlp(seed=0, epochs=30))
        onnx = models.onnx_from_weights(weights, tmp_path / "m" / "model.onnx")
        v1 = build_bundle(tmp_path / "digits-v1.bundle", {"model.onnx": onnx},
                          models.manifest_fields(1, "onnx", "model.onnx", models.baseline_for(weights)),
                          load_private_key(build_priv))
        x, y = models.digits_data()
        np.savez(tmp_path / "eval.npz", inputs=x[:300], labels=y[:300])

        # one real agent, enrolled with a one-time token, v1 installed, running
        tok = requests.post(f"{srv.url}/api/enrolment-tokens", headers={"Authorization": "Bearer op"},
                            json={"device_class": CLASS}, timeout=10).json()["token"]
        dev = f"{fleet_id}-cam"
        state = tmp_path / "agent" / "state"
        cfg = enrol(EnrolRequest(srv.url, tok, state, device_id=dev, http_port=free_port()))
        cfg.write(tmp_path / "agent.toml")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run([sys.executable, "-m", "agent", "install", "--config", str(tmp_path / "agent.toml"),
                        str(tmp_path / "digits-v1.bundle")], cwd=REPO, env=env, check=True, capture_output=True,
                       timeout=60)
        log = open(tmp_path / "agent.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(tmp_path / "agent.toml")],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: _online(srv, dev), 45, "the enrolled agent online on v1")

        # compile with latency measured on the device
        out = tmp_path / "out"
        res = CliRunner().invoke(cli, [
            "compile", "--onnx", str(onnx), "--eval", str(tmp_path / "eval.npz"), "--device-class", CLASS,
            "--precision", "int8", "--profile-on", CLASS, "--profile-runs", "20", "--profile-timeout", "40",
            "--latency-iterations", "5", "--max-latency-ms", "1000", "--signing-key", str(build_priv),
            "--name", "digits", "--version", "2", "--out", str(out), "--report-json", str(tmp_path / "r.json"),
            "--quiet"], env={"EDGEFLEET_URL": srv.url, "EDGEFLEET_TOKEN": "op",
                             "EDGEFLEET_PROFILE": str(tmp_path / "none.toml")}, catch_exceptions=False)
        assert res.exit_code == 0, res.output
        [measured] = [e for e in _events(srv, dev, "benchmark-result")]
        d = measured.details
        assert d["runs"] == 20 and d["precision"] == "int8" and 0 < d["p50_ms"] <= d["p99_ms"]
        report = json.loads((tmp_path / "r.json").read_text())
        [r] = report["builds"]
        assert r["latency"]["note"] == f"measured on device {dev}"
        assert (r["latency"]["p50_ms"], r["latency"]["p99_ms"]) == (d["p50_ms"], d["p99_ms"])
        assert f"measured on device {dev}" in res.output
        gate = next(g for g in r["gates"] if g["gate"] == "max-latency-ms")
        assert gate["value"] == d["p99_ms"] and f"on device {dev}" in gate["detail"]
        manifest = read_manifest_unverified(out / f"digits-v2-{CLASS}.bundle")
        [step] = [s for s in manifest["provenance"]["lineage"] if s["pass"] == "profile-on-device"]
        assert step["config"]["device_id"] == dev and step["metrics"]["p50_ms"] == d["p50_ms"]
        assert not (settings.artifacts_dir / d["bundle_sha256"]).exists()  # the compiler discarded its candidate

        # the device installed nothing: still v1, nothing of the candidate left on disk
        status = json.loads((state / "status.json").read_text())
        assert status["active"]["version"] == 1 and status["active"]["manifest_sha256"] == v1.manifest_sha256
        assert not list((state / "downloads").glob("*")) if (state / "downloads").exists() else True
        assert not [p for p in (state / "models").iterdir() if "profile-candidate" in p.name]

        # a forged benchmark command (signed by the build key, not a fleet key) is refused
        import paho.mqtt.client as mqtt

        forged = sign_document(make_command(dev, 10**6, "benchmark", {"candidate": d, "runs": 5}),
                               load_private_key(build_priv))
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.connect(*BROKER)
        c.loop_start()
        c.publish(f"edgefleet/v1/{fleet_id}/{dev}/cmd", json.dumps(forged), qos=1).wait_for_publish(5)
        c.loop_stop()
        c.disconnect()
        cid = forged["payload"]["id"]
        refused = wait_for(lambda: [e for e in _events(srv, dev, "command-refused") if e.command_id == cid], 20,
                           "the forged command refused")
        assert refused[0].details["unverified"] is True and refused[0].details["signature"] == "untrusted-key"
        assert len(_events(srv, dev, "benchmark-result")) == 1

        # the device picked never answers (listed online, nothing behind it): bounded wait, one line, exit 1
        with Session(srv.engine) as db:
            db.add(Device(id=f"{fleet_id}-ghost", fleet=fleet_id, device_class=CLASS, public_key="",
                          online=True, last_seen=time.time() + 3600))
            db.commit()
        slow = CliRunner().invoke(cli, [
            "compile", "--onnx", str(onnx), "--eval", str(tmp_path / "eval.npz"), "--device-class", CLASS,
            "--precision", "int8", "--profile-on", CLASS, "--profile-timeout", "2", "--latency-iterations", "5",
            "--signing-key", str(build_priv), "--out", str(tmp_path / "o1"), "--quiet"],
            env={"EDGEFLEET_URL": srv.url, "EDGEFLEET_TOKEN": "op", "EDGEFLEET_PROFILE": str(tmp_path / "none.toml")},
            catch_exceptions=False)
        assert slow.exit_code == 1, slow.output
        lines = slow.output.strip().splitlines()
        assert len(lines) == 1 and f"on device {fleet_id}-ghost: no result within 2s" in lines[0], slow.output

        # no device of the class online: one line, exit 2, before anything is compiled
        none = CliRunner().invoke(cli, [
            "compile", "--onnx", str(onnx), "--eval", str(tmp_path / "eval.npz"), "--device-class", "nvidia-jetson",
            "--profile-on", "nvidia-jetson", "--signing-key", str(build_priv), "--out", str(tmp_path / "o2"),
            "--quiet"], env={"EDGEFLEET_URL": srv.url, "EDGEFLEET_TOKEN": "op",
                             "EDGEFLEET_PROFILE": str(tmp_path / "none.toml")}, catch_exceptions=False)
        assert none.exit_code == 2, none.output
        lines = none.output.strip().splitlines()
        assert len(lines) == 1 and "no device of class nvidia-jetson is online" in lines[0], none.output
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        srv.stop()


def test_benchmark_refuses_a_candidate_not_signed_by_a_build_key(tmp_path: Path) -> None:
    """A fleet-signed command cannot make a device run a model no build key signed."""
    import models

    from agent.benchmark import BenchmarkError, BenchmarkRequest, run_benchmark
    from agent.keys import Keyring
    from agent.runtimes.base import RuntimeOptions

    weights = models.mlp_weights(models.train_mlp(seed=0, epochs=2))
    onnx = models.onnx_from_weights(weights, tmp_path / "model.onnx")
    build_priv, build_pub = generate_keypair(tmp_path / "k", "build")
    other = Ed25519PrivateKey.generate()
    fields = models.manifest_fields(0, "onnx", "model.onnx", {}, name="cand")
    build_bundle(tmp_path / "ok.bundle", {"model.onnx": onnx}, fields, load_private_key(build_priv))
    build_bundle(tmp_path / "bad.bundle", {"model.onnx": onnx}, fields, other)
    ring = Keyring.from_files([build_pub])
    got: dict[str, Any] = run_benchmark(tmp_path / "ok.bundle", ring, CLASS, RuntimeOptions(), tmp_path / "s",
                                        BenchmarkRequest(1, 5))
    assert got["runs"] == 5 and got["p99_ms"] >= got["p50_ms"] > 0
    with pytest.raises(BenchmarkError) as err:
        run_benchmark(tmp_path / "bad.bundle", ring, CLASS, RuntimeOptions(), tmp_path / "s", BenchmarkRequest(1, 5))
    assert err.value.reason in ("unknown-key", "bad-signature")
    assert not (tmp_path / "ok.bundle").exists() and not (tmp_path / "bad.bundle").exists()  # deleted after
    assert not list((tmp_path / "s").iterdir())  # nothing unpacked left behind


def test_benchmark_command_always_answers(tmp_path: Path) -> None:
    """A candidate that cannot be fetched, or a malformed command, still gets a benchmark-failed
    answer (the compiler is polling for it), and the command's result is failed."""
    from types import SimpleNamespace

    from agent.benchmark import execute
    from agent.lifecycle import InstallError

    events: list[tuple[str, dict[str, Any]]] = []
    results: list[tuple[str, str | None]] = []

    def fetch(_model: dict[str, Any]) -> Path:
        raise InstallError("download-failed", "HTTP 404 for the candidate")

    report = SimpleNamespace(emit_event=lambda kind, **kw: events.append((kind, kw)))
    handler = SimpleNamespace(lifecycle=None, fetch=fetch, downloads=tmp_path, max_bundle_bytes=None, report=report,
                              record=lambda p, result, reason: results.append((result, reason)))
    execute(handler, {"id": "c1", "kind": "benchmark", "candidate": {"url": "http://x/a", "bundle_sha256": "0" * 64}})
    execute(handler, {"id": "c2", "kind": "benchmark", "candidate": {}, "runs": 0})
    assert [(k, kw["command_id"], kw["details"]["code"]) for k, kw in events] == [
        ("benchmark-failed", "c1", "download-failed"), ("benchmark-failed", "c2", "malformed")]
    assert [r for r, _ in results] == ["failed", "failed"]
