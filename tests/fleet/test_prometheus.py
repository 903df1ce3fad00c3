"""Issue 14 item 6: model health a monitoring stack can alert on. The fleet's /metrics carries
per model/version/device-class health (requests, error rate, latency, PSI, devices reporting, last
telemetry) and rollouts by state and alerts by level; deploy/prometheus/ ships rules that promtool
accepts and unit-tests, and a real Prometheus scrapes the live fleet and evaluates them.

Prometheus and promtool come from Debian's `prometheus` package (`make monitoring`); without them
these tests fail with that instruction, they are never skipped."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fleet.console_world import ConsoleWorld, build

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "edgefleet-rules.yml"
SAMPLE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULE_TESTS = Path(__file__).parent / "prometheus" / "edgefleet_rules_test.yml"
MODEL_LABELS = {"model", "version", "device_class"}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install Debian's prometheus package (make monitoring, "
                    f"or apt-get install prometheus)")
    return path


def _run(*cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_promtool_accepts_the_rules_and_the_sample_config() -> None:
    promtool = _tool("promtool")
    r = _run(promtool, "check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 14 rules found" in r.stdout
    r = _run(promtool, "check", "config", str(SAMPLE_CONFIG))   # resolves rule_files beside it
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_unit_tests_of_the_alert_rules(tmp_path: Path) -> None:
    promtool = _tool("promtool")
    shutil.copy(RULES, tmp_path / RULES.name)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    r = _run(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_metrics_carry_model_health_with_bounded_labels(db_url: str, tmp_path: Path) -> None:
    """The console world: digits v2 drifted at the canary (paused, rolled back), alerts raised."""
    from fleet.app import fleet_context
    from fleet.drift.model_health import ModelHealthCollector

    world = build(tmp_path, db_url)
    try:
        text = world.app.test_client().get("/metrics").get_data(as_text=True)
        s = _samples(text)
        key = {"model": "digits", "device_class": "x86-64-generic"}
        v1 = _value(s, "edgefleet_model_feature_psi_max", version="1", **key)
        v2 = _value(s, "edgefleet_model_feature_psi_max", version="2", **key)
        assert v1 is not None and v2 is not None and v1 < 0.1 < 0.25 < v2, (v1, v2)
        assert _value(s, "edgefleet_model_prediction_psi", version="2", **key) > 0.25
        assert _value(s, "edgefleet_model_requests", version="2", **key) > 0
        assert _value(s, "edgefleet_model_error_rate", version="1", **key) == 0.0
        p50 = _value(s, "edgefleet_model_latency_p50_seconds", version="1", **key)
        p99 = _value(s, "edgefleet_model_latency_p99_seconds", version="1", **key)
        assert 0 < p50 <= p99 < 1
        assert _value(s, "edgefleet_model_devices_reporting", version="1", **key) == 10
        assert 1 <= _value(s, "edgefleet_model_devices_reporting", version="2", **key) < 10
        assert _value(s, "edgefleet_model_last_telemetry_timestamp_seconds", version="1", **key) > time.time() - 900
        assert _value(s, "edgefleet_rollouts", state="paused") == 1
        assert _value(s, "edgefleet_rollouts", state="running") == 0
        assert _value(s, "edgefleet_alerts_open", level="alert") >= 1
        # Bounded cardinality: model series carry exactly model, version, device class.
        model_series = [labels for (name, labels) in s if name.startswith("edgefleet_model_")
                        and name not in ("edgefleet_model_reviews_overdue", "edgefleet_model_health_series_dropped")]
        assert model_series and all({k for k, _ in labels} == MODEL_LABELS for labels in model_series)
        # The series cap: one group kept (the newest), the other counted as dropped.
        capped = ModelHealthCollector(fleet_context(world.app), max_series=1)
        fams = {f.name: f for f in capped.collect()}
        assert fams["edgefleet_model_health_series_dropped"].samples[0].value == 1
        assert len(fams["edgefleet_model_requests"].samples) == 1
    finally:
        world.stop()
        fleet_context(world.app).engine.dispose()


def test_online_quality_from_agent_outcomes_reaches_metrics(tmp_path: Path) -> None:
    """Confidence and labelled outcomes the agent's own code reports (two slices, one worse) become
    online accuracy, its CBPE estimate, the worst-slice gap and the low-confidence rate."""
    pytest.importorskip("fleet.analytics.quality", reason="the analytics engine (issue 14 items 4-5) is not here")
    from sqlmodel import Session, select

    from agent.confidence import ConfidenceStats, MonitorSpec
    from agent.outcomes import OutcomeWindow
    from fleet.app import fleet_context
    from fleet.models import Aggregate

    spec = MonitorSpec(n_classes=10, min_slice_count=1)
    out = OutcomeWindow(spec)
    truth = {"region=eu": (200, 190), "region=us": (200, 150)}   # (labelled, correct)
    for key, (n, ok) in truth.items():
        for i in range(n):
            out.add(("rid", 2, 3 if i < ok else 4, None, 9, key), 3)
    conf = ConfidenceStats()
    conf.add(np.full(300, 0.95), np.full(300, 0.9))
    conf.add(np.full(100, 0.3), np.full(100, 0.05))   # 25% under the low-confidence threshold
    world = build(tmp_path)
    try:
        with Session(fleet_context(world.app).engine) as db:
            agg = db.exec(select(Aggregate).where(Aggregate.model_version == 2)
                          .order_by(Aggregate.window_start.desc())).first()
            agg.payload = {**agg.payload, "confidence": conf.to_dict(), "outcomes": out.to_dict()}
            db.add(agg)
            db.commit()
        s = _samples(world.app.test_client().get("/metrics").get_data(as_text=True))
        key = {"model": "digits", "version": "2", "device_class": "x86-64-generic"}
        assert _value(s, "edgefleet_model_outcomes_labelled", **key) == 400
        assert _value(s, "edgefleet_model_online_accuracy", **key) == pytest.approx(340 / 400)
        assert _value(s, "edgefleet_model_slice_gap", **key) == pytest.approx(0.95 - 0.75)
        assert _value(s, "edgefleet_model_low_confidence_rate", **key) == pytest.approx(0.25)
        est = _value(s, "edgefleet_model_online_accuracy_estimate", **key)
        assert est is not None and 0 < est < 1
        # v1 reported no outcomes: no accuracy series rather than a made-up one.
        assert _value(s, "edgefleet_model_online_accuracy", model="digits", version="1",
                      device_class="x86-64-generic") is None
    finally:
        fleet_context(world.app).engine.dispose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _wait(pred: Any, timeout: float, what: str, proc: subprocess.Popen[str]) -> Any:
    end = time.time() + timeout
    last: Any = None
    while time.time() < end:
        if proc.poll() is not None:
            pytest.fail(f"prometheus exited ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        try:
            last = pred()
        except OSError:
            last = None
        if last:
            return last
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}; last answer {last!r}")


@pytest.mark.slow
def test_real_prometheus_scrapes_the_fleet_and_evaluates_the_rules(tmp_path: Path) -> None:
    from fleet.app import fleet_context

    prometheus = _tool("prometheus")
    world: ConsoleWorld = build(tmp_path).serve()
    port = _free_port()
    shutil.copy(RULES, tmp_path / RULES.name)
    host = world.url.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{RULES.name}]\n"
        "scrape_configs:\n"
        f"  - job_name: edgefleet\n    static_configs: [{{targets: ['{host}']}}]\n")
    proc = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        def target_up() -> dict[str, Any] | None:
            active = _get(f"{api}/targets")["data"]["activeTargets"]
            return next((t for t in active if t["health"] == "up"), None)

        target = _wait(target_up, 45, "the fleet target to be up", proc)
        assert target["scrapeUrl"] == f"{world.url}/metrics" and not target["lastError"]

        def psi_v2() -> list[Any]:
            q = urllib.parse.quote('edgefleet_model_feature_psi_max{model="digits",version="2"}')
            return _get(f"{api}/query?query={q}")["data"]["result"]

        assert float(_wait(psi_v2, 20, "the PSI series", proc)[0]["value"][1]) > 0.25

        def firing() -> set[str]:
            return {a["labels"]["alertname"] for a in _get(f"{api}/alerts")["data"]["alerts"]
                    if a["state"] == "firing"}

        names = _wait(lambda: firing() >= {"EdgeFleetRolloutPaused", "EdgeFleetAlertOpen"} and firing(), 30,
                      "the rollout-paused and open-alert rules to fire", proc)
        assert "EdgeFleetModelErrorRate" not in names
        groups = _get(f"{api}/rules")["data"]["groups"]
        assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        world.stop()
        fleet_context(world.app).engine.dispose()
