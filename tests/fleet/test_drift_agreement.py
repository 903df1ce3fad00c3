"""One drift engine (issue 17): telemetry made by real in-process agents (agent.telemetry, signed
in the agent's own outbox) goes through the fleet's real ingest Processor; the rollout's drift
gates (windows merged as rollout evidence) and the console's drift page for the rollout (the
aggregates ingest merged) reach the same verdict, and the page shows the one the gate recorded."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from sqlmodel import Session, select

from agent.config import TelemetryConfig
from agent.keys import public_key_to_b64
from fleet.app import create_app
from fleet.console import drift_view
from fleet.db import init_db, make_engine
from fleet.drift import alerts
from fleet.ingest.store import Processor
from fleet.models import Aggregate, Device, ModelVersion
from fleet.rollouts import evidence
from fleet.rollouts.gates import CohortStats, gate_feature_drift, gate_prediction_drift
from fleet.rollouts.models import Rollout, RolloutWave
from fleet.rollouts.spec import Gates
from fleet.settings import FleetSettings
from tests.agent.conftest import (  # noqa: F401  (the agent's fixtures: keys, bundles, in-process agents)
    agent_factory,
    bundles,
    config_factory,
    digits,
    fleet_keys,
    model_files,
)

pytestmark = pytest.mark.slow
VIEW = {"Authorization": "Bearer viewer-token"}
GATES = {"min_requests": 50, "min_drift_samples": 150}


def _agent_windows(make: Any, bundle: Any, x: np.ndarray, name: str) -> tuple[list[tuple[str, bytes]], Any]:
    """Two telemetry windows of one agent serving `x`, as signed in its outbox."""
    a = make(name, telemetry=TelemetryConfig(sample_rate=1.0, max_samples_per_s=100000))
    a.install(bundle)
    for half in (x[: len(x) // 2], x[len(x) // 2:]):
        a.telemetry.sample_budget = 100000
        for i in range(0, len(half), 8):
            a.predict(half[i:i + 8])
        a.flush_telemetry()
    return [(m.topic, m.payload) for m in a.outbox.pending(limit=1000) if m.kind == "telemetry"], a


def _text(html: bytes, element_id: str) -> str:
    m = re.search(rf'id="{element_id}"[^>]*>(.*?)</', html.decode(), re.S)
    assert m, element_id
    return re.sub(r"\s+", " ", m.group(1)).strip()


@pytest.mark.parametrize("inputs", ["honest", "drifted"])
def test_console_and_gate_agree_on_agent_telemetry(inputs: str, agent_factory, bundles, digits,  # noqa: F811
                                                   model_files, tmp_path) -> None:  # noqa: F811
    x = digits[0][:600].astype(np.float32)
    if inputs == "drifted":
        x = x[:, ::-1] * 0.5 + 4.0   # mirrored, dimmer and brighter: the inputs leave the training range
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    init_db(engine)
    settings = FleetSettings(data_dir=tmp_path / "fleet", api_tokens={"viewer-token": "viewer"})
    msgs, devices = [], []
    for i in range(2):
        m, a = _agent_windows(agent_factory, bundles["v2"], x[i::2], f"agree-{i}")
        msgs += m
        devices.append(a)
    baseline = model_files["baseline_v2"]
    with Session(engine) as s:
        for a in devices:
            s.add(Device(id=a.cfg.device_id, device_class=a.cfg.device_class,
                         public_key=public_key_to_b64(a.device_key.public_key())))
        s.add(ModelVersion(name="digits", version=2, device_class="x86-64-generic", format="onnx",
                           precision="fp32", manifest_sha256="2" * 64, bundle_sha256="2" * 64, size=1,
                           artifact_path="-", manifest={"drift_baseline": baseline}))
        s.commit()
    empty = create_app(settings, engine=engine).test_client().get("/console/models/digits/2/drift", headers=VIEW)
    assert _text(empty.data, "drifted-count") == "no data" and "0.000" not in empty.data.decode()
    Processor(settings, engine).process(msgs)

    # the gate: what ingest merged (Aggregate rows, as rollout evidence reads them), judged against the baseline
    g = Gates(**GATES)
    with Session(engine) as s:
        rows = s.exec(select(Aggregate).where(Aggregate.model_name == "digits")).all()
    assert rows and all(r.model_version == 2 for r in rows)
    cand = evidence.merge_windows(rows)
    assert cand.windows == 4
    feature, prediction = (gate(cand, CohortStats(), baseline, g)
                           for gate in (gate_feature_drift, gate_prediction_drift))
    assert feature.status == ("fail" if inputs == "drifted" else "pass"), feature.detail
    with Session(engine) as s:   # what the evaluator records for the wave (RolloutWave.last_verdict)
        r = Rollout(name="r", model_name="digits", version=2, status="paused" if feature.status == "fail" else "running",
                    spec={"model_name": "digits", "version": 2, "gates": GATES, "waves": [{"name": "w0", "percent": 100}]})
        s.add(r)
        s.flush()
        s.add(RolloutWave(rollout_id=r.id, index=0, name="w0", status="running", last_verdict={
            "status": feature.status, "results": [feature.to_dict(), prediction.to_dict()], "at": 1.0}))
        s.commit()

    # the console: its drift page for the rollout, computed from ingest's aggregates
    page = create_app(settings, engine=engine).test_client().get("/console/models/digits/2/drift", headers=VIEW)
    assert page.status_code == 200
    drifted, judged = len(feature.detail["drifted"]), feature.detail["judged"]
    assert judged == len(baseline["features"])
    assert _text(page.data, "drifted-count") == f"{drifted} / {judged}"
    assert _text(page.data, "gate-feature-drift").startswith(f"{feature.status} · {drifted} / {judged} features drifted")
    assert (_text(page.data, "drift-level") == "alert") == (feature.status == "fail")
    with Session(engine) as s:   # the same judgement, feature by feature
        params = drift_view.for_version(s, "digits", 2).params
        report = alerts.fleet_drift(s, params, "digits", 2)
    assert sorted(report.drifted_features) == sorted(feature.detail["drifted"]) and report.n_current == 600
    fleet_view = create_app(settings, engine=engine).test_client().get(
        "/console/models/digits/2/drift?settings=fleet", headers=VIEW)
    assert "Use the rollout" in fleet_view.data.decode()
