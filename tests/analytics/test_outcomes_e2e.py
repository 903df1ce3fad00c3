"""End to end (issue 14): an in-process agent enrolled in a real fleet server reports over the real
Mosquitto; labels come back on the device (Agent.feedback) and in bulk at the backend
(POST /api/outcomes, joined by request id with the prediction records the device sent); the
fleet's online accuracy covers the truth computed here; the label-free estimate is produced."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from sqlmodel import Session, select

from fleet.models import PredictionRecord, TelemetryWindow
from fleet.server import FleetServer
from fleet.settings import FleetSettings
from tests.waiting import wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]
SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "telemetry.schema.json"


def test_device_and_backend_labels_reach_online_accuracy(tmp_path, fleet_keys, bundles, digits) -> None:
    from agent.daemon import Agent
    from agent.enrol import EnrolRequest, enrol

    fleet_id = f"oc{time.time_ns() % 10**9}"
    settings = FleetSettings(data_dir=tmp_path / "fleet", mqtt_url="mqtt://127.0.0.1:1883", fleet_id=fleet_id,
                             trusted_build_keys=[fleet_keys["build_pub"]],
                             api_tokens={"op": "operator", "view": "viewer"},
                             start_rollouts=False, embedded_broker=False, drift_interval_s=0)
    srv = FleetServer(settings, port=0, start_ingest=True, drift_evaluator=False).start()
    agent = None
    try:
        op = {"Authorization": "Bearer op"}
        tok = requests.post(f"{srv.url}/api/enrolment-tokens", headers=op, json={}, timeout=10).json()["token"]
        cfg = enrol(EnrolRequest(srv.url, tok, tmp_path / "dev", device_id="cam-1"))
        cfg.build_keys = [str(fleet_keys["build_pub"])]
        cfg.telemetry.window_s = 3600.0
        cfg.telemetry.sample_rate = 1.0
        cfg.telemetry.max_samples_per_s = 100000
        cfg.telemetry.prediction_records_per_window = 1000
        agent = Agent(cfg).start()
        agent.install(bundles["v1"], allow_new_name=True)
        x, y = digits[0][:600].astype(np.float32), digits[1][:600]
        rng = np.random.default_rng(7)
        world = np.where(rng.random(600) < 0.2, (y + 1) % 10, y)   # the world moved for 20%
        ids, right = [], 0
        for i in range(600):
            r = agent.predict(x[i:i + 1])
            ids.append(r.request_id)
            right += int(int(np.argmax(r["logits"])) == world[i])
        truth = right / 600
        for i in range(300):                       # device path
            agent.feedback(ids[i], int(world[i]))
        sent = agent.flush_telemetry()
        assert sent[0]["outcomes"]["labelled"] == 300 and len(sent[0]["prediction_records"]) == 600
        jsonschema = pytest.importorskip("jsonschema")
        jsonschema.validate({"payload": {**sent[0], "seq": 1, "sent_at": 1.0},
                             "signature": {"alg": "Ed25519", "key_id": "0" * 16, "sig": "x"}},
                            json.loads(SCHEMA.read_text()))

        def stored() -> bool:
            with Session(srv.engine) as db:
                return db.exec(select(TelemetryWindow).where(TelemetryWindow.device_id == "cam-1")).first() is not None
        wait_for(stored, timeout=30)

        # backend path: a downstream system labels the other half in bulk by request id
        bad = requests.post(f"{srv.url}/api/outcomes", headers=op, json={"outcomes": [{"request_id": "x"}]},
                            timeout=10)
        assert bad.status_code == 400
        assert requests.post(f"{srv.url}/api/outcomes", headers={"Authorization": "Bearer view"},
                             json={"outcomes": [{"request_id": "x", "label": 1}]}, timeout=10).status_code == 403
        labels = [{"request_id": ids[i], "label": int(world[i])} for i in range(300, 600)]
        res = requests.post(f"{srv.url}/api/outcomes", headers=op,
                            json={"outcomes": labels + [{"request_id": "unknown-1", "label": 3}]}, timeout=30)
        assert res.status_code == 200, res.text
        assert res.json() == {"accepted": 301, "matched": 300}
        with Session(srv.engine) as db:
            assert len(db.exec(select(PredictionRecord)).all()) == 600

        rep = requests.get(f"{srv.url}/api/analytics/digits/1", headers=op, timeout=30).json()
        acc = rep["quality"]["accuracy"]
        assert acc["n"] == 600                     # 300 on the device + 300 joined at the backend
        assert acc["low"] <= truth <= acc["high"]
        assert acc["correct"] == right             # every prediction labelled: exact
        est = rep["quality"]["estimated_accuracy"]
        assert est["estimate"] is True and est["predictions"] == 600
        assert rep["concept_drift"]["status"] in ("pass", "fail", "wait")
        assert rep["quality"]["macro_f1"] is not None and len(rep["quality"]["per_class"]) == 10
    finally:
        if agent is not None:
            agent.stop()
        srv.stop()
