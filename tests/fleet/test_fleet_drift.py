"""Drift: merged PSI/JS equal direct computation; guards, thresholds, control cohort, alerts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.sketches import js_distance, psi
from fleet.devsim import SimDevice, make_bundle
from fleet.drift import alerts
from fleet.drift.engine import chi2_quantile, compare, merge_payloads
from fleet.ingest.store import Processor
from fleet.settings import DriftSettings


def _payloads(baseline, n_dev: int, shift: float, n: int = 300, seed: int = 0, version: int = 1,
              window_start: float = 0.0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    return [SimDevice(f"d{i}").telemetry(rng, baseline, n=n, shift=shift, version=version,
                                         window_start=window_start) for i in range(n_dev)]


def test_psi_and_js_match_direct_computation(baseline) -> None:  # type: ignore[no-untyped-def]
    ps = _payloads(baseline, 20, shift=0.2)
    rep = compare(ps, baseline, DriftSettings(min_samples=100))
    for j, f in enumerate(rep.features):
        cur = np.sum([p["features"][j]["counts"] for p in ps], axis=0)
        ref = np.asarray(baseline["features"][j]["counts"])
        assert f.current == cur.tolist()
        assert f.psi == pytest.approx(psi(ref, cur, 1e-4), abs=1e-6)
        assert f.js == pytest.approx(js_distance(ref, cur), abs=1e-6)
    pred = np.sum([p["prediction"]["counts"] for p in ps], axis=0)
    assert rep.prediction.psi == pytest.approx(psi(np.asarray(baseline["prediction"]["counts"]), pred, 1e-4), abs=1e-6)
    assert rep.n_current == 20 * 300 and rep.n_payloads == 20


def test_levels_dataset_drift_and_min_samples(baseline) -> None:  # type: ignore[no-untyped-def]
    ds = DriftSettings(min_samples=1000)
    assert compare(_payloads(baseline, 10, 0.0), baseline, ds).level == "ok"
    drifted = compare(_payloads(baseline, 10, 0.4), baseline, ds)
    assert drifted.level == "alert" and drifted.dataset_drift and drifted.drifted_share == 1.0
    assert all(f.level == "alert" for f in drifted.features)
    small = compare(_payloads(baseline, 2, 0.4, n=100), baseline, ds)  # 200 samples < 1000
    assert small.level == "insufficient" and not small.dataset_drift and small.features[0].psi > 0.2
    assert all(f.level == "insufficient" for f in small.features)
    # thresholds are configurable
    strict = compare(_payloads(baseline, 10, 0.05), baseline, DriftSettings(min_samples=100, psi_warn=0.001,
                                                                            psi_alert=0.002))
    loose = compare(_payloads(baseline, 10, 0.05), baseline, DriftSettings(min_samples=100, psi_warn=5, psi_alert=9))
    assert strict.level == "alert" and loose.level == "ok"


def test_noise_floor_stops_small_sample_false_alarms(baseline) -> None:  # type: ignore[no-untyped-def]
    # Same distribution, tiny windows: PSI is noisy but must not alarm.
    ds = DriftSettings(min_samples=50, psi_warn=0.1, psi_alert=0.2)
    levels = [compare(_payloads(baseline, 1, 0.0, n=60, seed=s), baseline, ds).level for s in range(20)]
    assert "alert" not in levels
    assert chi2_quantile(0.999, 9) == pytest.approx(27.88, rel=0.03)


def test_control_cohort_and_mismatched_edges(baseline) -> None:  # type: ignore[no-untyped-def]
    control = _payloads(baseline, 8, 0.0, seed=1)
    canary = _payloads(baseline, 8, 0.3, seed=2)
    ds = DriftSettings(min_samples=500)
    assert compare(canary, control, ds).level == "alert"
    assert compare(_payloads(baseline, 8, 0.0, seed=3), control, ds).level == "ok"
    odd = _payloads(baseline, 1, 0.0)[0]
    odd["features"][0]["edges_hash"] = "ffff"
    merged = merge_payloads(control + [odd])
    assert merged.n_payloads == 8 and merged.skipped == 1


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.integers(0, 50), min_size=11, max_size=11), min_size=1, max_size=12))
def test_merge_is_exact_addition(rows) -> None:  # type: ignore[no-untyped-def]
    ps = [{"features": [{"name": "f", "edges_hash": "h", "counts": r}]} for r in rows]
    merged = merge_payloads(ps)
    assert merged.counts[0].tolist() == np.sum(rows, axis=0).tolist()


def test_alerts_raised_listed_acknowledged(fleet, baseline, tmp_path) -> None:  # type: ignore[no-untyped-def]
    for v in (1, 2):
        make_bundle(tmp_path / f"b{v}.tar", fleet.build_key, version=v, baseline=baseline)
        assert fleet.client.post("/api/models", headers=fleet.h("operator"),
                                 data=(tmp_path / f"b{v}.tar").read_bytes()).status_code == 201
    from fleet.registry.enrolment import create_enrolment_token, enrol

    proc = Processor(fleet.settings, fleet.ctx.engine)
    rng = np.random.default_rng(0)
    msgs = []
    for i in range(10):
        d = SimDevice(f"a{i}", fleet=fleet.settings.fleet_id)
        with fleet.ctx.session() as db:
            tok, _ = create_enrolment_token(db, "t")
        with fleet.ctx.session() as db:
            enrol(db, fleet.settings, tok, d.public_key_b64, device_id=d.device_id, attributes={"region": "eu"})
        version, shift = (2, 0.4) if i < 5 else (1, 0.0)
        msgs.append((d.topic("telemetry"), d.sign(d.telemetry(rng, baseline, version=version, shift=shift,
                                                              window_start=600.0))))
    proc.process(msgs)
    c, v = fleet.client, fleet.h("viewer")
    base = c.get("/api/models/digits/versions/2/drift?counts=1", headers=v).json
    assert base["level"] == "alert" and base["reference"] == "baseline" and base["features"][0]["current"]
    ctrl = c.get("/api/models/digits/versions/2/drift?reference=control", headers=v).json
    assert ctrl["reference"] == "control:v1" and ctrl["level"] == "alert"
    assert c.get("/api/models/digits/versions/1/drift", headers=v).json["level"] == "ok"
    assert c.post("/api/drift/evaluate", headers=v).status_code == 403
    new = c.post("/api/drift/evaluate", headers=fleet.h("operator")).json["new_alerts"]
    assert {(a["version"], a["reference"], a["level"]) for a in new} == {(2, "baseline", "alert"),
                                                                         (2, "control:v1", "alert")}
    assert c.post("/api/drift/evaluate", headers=fleet.h("operator")).json["new_alerts"] == []  # stored once
    listed = c.get("/api/alerts?status=open", headers=v).json
    assert listed["total"] == 2
    one = c.get(f"/api/alerts/{listed['items'][0]['id']}", headers=v).json
    assert one["evidence"]["features"][0]["psi"] > 0.2 and "PSI" in one["summary"]
    r = c.post(f"/api/alerts/{one['id']}/ack", headers=fleet.h("operator"))
    assert r.json["status"] == "acknowledged" and r.json["acknowledged_by"] == "bootstrap-operator"
    assert c.get("/api/alerts?status=open", headers=v).json["total"] == 1
    perf = c.get("/api/models/digits/versions/2/performance", headers=v).json
    assert perf["total"]["requests"] == 5 * 200 and perf["total"]["latency_p50_us"] > 500
    assert perf["cohorts"]["region=eu"]["latency_p99_us"] >= perf["cohorts"]["region=eu"]["latency_p50_us"]
    with fleet.ctx.session() as db:
        assert alerts.control_version(db, "digits", 2) == 1


def test_small_baseline_from_the_compiler_is_usable() -> None:
    """Compiler baselines hold a few hundred samples (e.g. 400): still a valid reference."""
    from fleet.devsim import make_baseline

    small = make_baseline(seed=4, n_samples=400)
    assert small["n_samples"] == 400
    ds = DriftSettings()  # defaults: min_samples 1000, min_reference_samples 100
    assert compare(_payloads(small, 10, 0.0, n=500), small, ds).level == "ok"
    assert compare(_payloads(small, 10, 0.4, n=500), small, ds).level == "alert"
    assert compare(_payloads(small, 1, 0.4, n=500), small, ds).level == "insufficient"
    # a control cohort (payloads) must itself have min_samples
    assert compare(_payloads(small, 10, 0.0, n=500), _payloads(small, 1, 0.0, n=500), ds).level == "insufficient"
