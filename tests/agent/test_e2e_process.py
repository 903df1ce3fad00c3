"""End to end with real processes: an agent process serving over its Unix socket while the fleet
sends signed install commands over the real Mosquitto; every concurrent request succeeds."""

import json
import threading
import uuid

import pytest

from agent.keys import load_private_key, sign_document
from agent.local_server import LocalClient
from agent.protocol import make_command, topic
from tests.agent.conftest import BROKER_URL, AgentProcess, Subscriber, make_config, model_ref, wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]


def test_swaps_under_load_in_agent_process(tmp_path, fleet_keys, bundles, bundle_server, digits) -> None:
    fleet = f"e{uuid.uuid4().hex[:8]}"
    sock = str(tmp_path / "a.sock")
    cfg = make_config(tmp_path / "e2e", fleet_keys["pub"], device_id="e2e-1", mqtt_url=BROKER_URL, fleet_id=fleet,
                      unix_socket=sock, window_s=1.0)
    proc = AgentProcess(cfg, tmp_path / "e2e.toml").start()
    sub = Subscriber(BROKER_URL, f"edgefleet/v1/{fleet}/#")
    key = load_private_key(fleet_keys["priv"])
    from agent.keys import Keyring

    ring = Keyring.from_files([fleet_keys["build_pub"]])  # bundles are signed by the build key

    def send(seq: int, bundle) -> None:
        cmd = make_command("e2e-1", seq, "install", {"model": model_ref(bundle, bundle_server.url, ring)})
        sub.publish(topic(fleet, "e2e-1", "cmd"), json.dumps(sign_document(cmd, key)).encode())

    failures: list[str] = []
    served = [0]
    stop = threading.Event()

    def client() -> None:
        c = LocalClient(sock)
        while not stop.is_set():
            try:
                out = c.predict({"x": digits[0][:2]})
                assert out["logits"].shape == (2, 10)
                served[0] += 1
            except Exception as exc:  # noqa: BLE001 - any failure counts
                failures.append(repr(exc))
        c.close()

    try:
        wait_for(lambda: proc.status().get("mqtt_connected"), 20, what="agent connected")
        send(1, bundles["v1"])
        wait_for(lambda: (proc.status().get("active") or {}).get("version") == 1, 30, what="v1 active")
        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        wait_for(lambda: served[0] > 20, 20, what="load running")
        send(2, bundles["v2"])
        wait_for(lambda: (proc.status().get("active") or {}).get("version") == 2, 30, what="v2 active")
        send(3, bundles["v3"])
        wait_for(lambda: (proc.status().get("active") or {}).get("version") == 3, 30, what="v3 active")
        n_before = served[0]
        wait_for(lambda: served[0] > n_before + 20, 20, what="serving after swaps")
        stop.set()
        for t in threads:
            t.join(timeout=10)
        assert failures == []
        # telemetry from the process accounts for the requests served per version
        wait_for(lambda: sum(d["payload"]["requests"] for d in sub.payloads("/telemetry")) >= served[0], 20,
                 what="telemetry for all requests")
        versions = {d["payload"]["model"]["version"] for d in sub.payloads("/telemetry") if d["payload"]["requests"]}
        assert {1, 3} <= versions
    finally:
        stop.set()
        proc.stop()
        sub.close()
        import paho.mqtt.publish as publish

        publish.single(topic(fleet, "e2e-1", "state"), b"", retain=True, hostname="127.0.0.1")
