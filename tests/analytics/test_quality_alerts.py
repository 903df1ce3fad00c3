"""Alerts from online quality (issue 14 item 5) on telemetry made by the agent's own code, stored
in a real fleet database: a concept-drift version raises a "concept" alert (once per hour bucket),
persistent concept alerts open a retraining request (approval stays human), a low-confidence
spike raises a warning; an honest version raises nothing."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from sqlmodel import Session, select

from agent.config import TelemetryConfig
from fleet.db import init_db, make_engine
from fleet.drift import alerts, retraining
from fleet.ingest import aggregate
from fleet.models import (
    Aggregate,
    DeviceVersionWindows,
    DriftAlert,
    ModelVersion,
    RetrainingRequest,
    TelemetryWindow,
)
from fleet.settings import FleetSettings

pytestmark = pytest.mark.slow


def _windows(agent: Any, x: np.ndarray, y: np.ndarray, flip: float, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    for i in range(len(x)):
        r = agent.predict(x[i:i + 1])
        label = int(y[i]) if rng.random() >= flip else (int(y[i]) + 1) % 10
        agent.feedback(r.request_id, label)
    return agent.flush_telemetry()


def _store(db: Session, payloads: list[dict[str, Any]], device: str, at: float, seq0: int) -> None:
    for i, p in enumerate(payloads):
        db.add(TelemetryWindow(device_id=device, seq=seq0 + i, window_start=at - 60, window_end=at,
                               model_name=p["model"]["name"], model_version=p["model"]["version"],
                               role=p["model"]["role"], device_class=p["device_class"], requests=p["requests"],
                               errors=sum(p["errors"].values()), payload=p))
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for p in payloads:   # and merged, as ingest does (quality is read from the aggregates)
        groups.setdefault((p["model"]["name"], p["model"]["version"], p["model"]["role"], p["device_class"]), []).append(p)
    for (name, version, role, cls), ps in groups.items():
        merged = aggregate.merge_all(ps)
        db.add(Aggregate(model_name=name, model_version=version, role=role, device_class=cls, cohort=device,
                         window_start=at - 60, n_windows=merged["n_windows"], requests=merged["requests"],
                         errors=sum(merged["errors"].values()), payload=merged))
        # and counted per device, as ingest does (which versions reported is read from these)
        row = db.get(DeviceVersionWindows, (device, name, role, version)) or DeviceVersionWindows(
            device_id=device, model_name=name, role=role, model_version=version, device_class=cls,
            first_start=at - 60, last_end=at, windows=0)
        row.last_end, row.windows = max(row.last_end, at), row.windows + len(ps)
        db.add(row)
    db.commit()


def _version(db: Session, version: int, accuracy: float) -> None:
    db.add(ModelVersion(name="digits", version=version, device_class="x86-64-generic", format="onnx",
                        precision="fp32", manifest_sha256=f"{version:064x}", bundle_sha256=f"{version:064x}",
                        size=1, artifact_path="-", manifest={"metrics": {"task": "classification",
                                                                        "metric_name": "accuracy",
                                                                        "metric": accuracy}}))
    db.commit()


def test_concept_drift_alerts_and_retraining(agent_factory, bundles, digits, tmp_path) -> None:
    x, y = digits[0].astype(np.float32), digits[1]
    tel = TelemetryConfig(sample_rate=1.0, max_samples_per_s=100000)
    honest = agent_factory("al-1", telemetry=tel)
    honest.install(bundles["v1"])
    drifted = agent_factory("al-2", telemetry=tel)
    drifted.install(bundles["v2"])
    good = _windows(honest, x[:400], y[:400], flip=0.0, seed=1)
    bad = _windows(drifted, x[400:800], y[400:800], flip=0.35, seed=2)
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    init_db(engine)
    settings = FleetSettings(data_dir=tmp_path / "fleet")
    t0 = time.time()
    with Session(engine) as db:
        _version(db, 1, 0.95)
        _version(db, 2, 0.95)
        _store(db, good, "al-1", t0, 1)
        _store(db, bad, "al-2", t0, 1)
        new = alerts.evaluate(db, settings, since=t0 - 3600)
        db.commit()
        concept = [a for a in new if a.reference == "concept"]
        assert [(a.model_version, a.level) for a in concept] == [(2, "alert")]
        assert concept[0].evidence["verdict"]["against"] == "build"
        assert concept[0].evidence["verdict"]["p_value"] < 0.01
        assert alerts.evaluate(db, settings, since=t0 - 3600) == []   # once per hour bucket
        # the alert persists over three hourly evaluations: a retraining request opens (not run)
        from fleet.analytics.alerts import evaluate_quality

        for h in (1, 2):
            evaluate_quality(db, now=t0 + h * 3600, lookback_s=4 * 3600)
        db.commit()
        opened = retraining.check(db, settings, at=t0 + 2 * 3600)
        db.commit()
        assert [(r.model_version, r.status) for r in opened] == [(2, "open")]
        assert db.exec(select(RetrainingRequest)).all()[0].model_version == 2
        assert not db.exec(select(DriftAlert).where(DriftAlert.model_version == 1,
                                                    DriftAlert.reference == "concept")).all()

        # low confidence: faint inputs an hour later, against the day before
        faint = np.random.default_rng(0).normal(0, 0.3, size=(400, 64)).astype(np.float32)
        for i in range(400):
            honest.predict(faint[i:i + 1])
        _store(db, honest.flush_telemetry(), "al-1", t0 + 3 * 3600, 10)
        warn = evaluate_quality(db, now=t0 + 3 * 3600 + 1, lookback_s=1800)
        db.commit()
        assert [(a.model_version, a.reference, a.level) for a in warn] == [(1, "low_confidence", "warn")]
    engine.dispose()


def test_backend_labels_reach_the_wave_gate(agent_factory, bundles, digits, tmp_path) -> None:
    """Labels posted at the backend (no device feedback) join into the rollout evidence."""
    from fleet.analytics.join import add_wave_labels, post_labels
    from fleet.analytics.quality import OnlineQuality
    from fleet.rollouts.gates import CohortStats, gate_online_accuracy
    from fleet.rollouts.spec import Gates

    x, y = digits[0].astype(np.float32), digits[1]
    tel = TelemetryConfig(sample_rate=1.0, max_samples_per_s=100000, prediction_records_per_window=1000)
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    init_db(engine)
    labels: list[tuple[str, float]] = []
    rng = np.random.default_rng(3)
    with Session(engine) as db:
        for dev, bundle, flip, lo in (("wv-ctl", "v1", 0.0, 0), ("wv-cand", "v2", 0.35, 400)):
            a = agent_factory(dev, telemetry=tel)
            a.install(bundles[bundle])
            for i in range(lo, lo + 400):
                r = a.predict(x[i:i + 1])
                labels.append((r.request_id, float(y[i] if rng.random() >= flip else (y[i] + 1) % 10)))
            _store(db, a.flush_telemetry(), dev, time.time(), 1)
        assert post_labels(db, labels) == {"accepted": 800, "matched": 800}
        cand, ctl = OnlineQuality(), OnlineQuality()
        add_wave_labels(db, cand, ctl, model="digits", version=2, wave_devices=["wv-cand"],
                        control_devices=["wv-ctl"], since=0.0)
        assert (cand.labelled, ctl.labelled) == (400, 400)
        g = gate_online_accuracy(CohortStats(quality=cand), CohortStats(quality=ctl), None, Gates(min_labelled=200))
        assert g.status == "fail" and g.detail["against"] == "control"
    engine.dispose()
