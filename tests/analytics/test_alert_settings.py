"""The online-quality alert thresholds are fleet settings (`[fleet.analytics]`, EDGEFLEET_ANALYTICS_*):
the schema refuses bad values, the environment overrides the file, and a changed threshold changes
which alert the same telemetry (made by a real agent) raises."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from sqlmodel import Session

from agent.config import TelemetryConfig
from fleet.db import init_db, make_engine
from fleet.drift import alerts
from fleet.settings import AnalyticsSettings, FleetSettings, SettingsError, load_settings
from tests.analytics.test_quality_alerts import _store, _version, _windows


def _toml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(f"[fleet]\ndata_dir = '{tmp_path / 'fleet'}'\n\n[fleet.analytics]\n{body}\n")
    return path


def test_file_then_environment(tmp_path) -> None:
    path = _toml(tmp_path, "min_labelled = 500\naccuracy_margin = 0.1")
    s = load_settings(path, env={})
    assert (s.analytics.min_labelled, s.analytics.accuracy_margin, s.analytics.alpha) == (500, 0.1, 0.01)
    s = load_settings(path, env={"EDGEFLEET_ANALYTICS_MIN_LABELLED": "900", "EDGEFLEET_ANALYTICS_ALPHA": "0.05"})
    assert (s.analytics.min_labelled, s.analytics.accuracy_margin, s.analytics.alpha) == (900, 0.1, 0.05)
    assert load_settings(env={}).analytics == AnalyticsSettings()


@pytest.mark.parametrize("body, env, message", [
    ("min_labeled = 5", {}, "unknown fleet setting 'analytics.min_labeled'"),
    ("min_labelled = 'many'", {}, "fleet setting 'analytics.min_labelled' must be int, not 'many'"),
    ("alpha = 0.7", {}, "fleet setting 'analytics.alpha' must be between 0 and 0.5, not 0.7"),
    ("max_slice_gap_increase = -0.1", {}, "'analytics.max_slice_gap_increase' must be between 0 and 1"),
    ("", {"EDGEFLEET_ANALYTICS_LOOKBACK_S": "six hours"}, "EDGEFLEET_ANALYTICS_LOOKBACK_S='six hours' must be float"),
    ("", {"EDGEFLEET_ANALYTICS_MIN_LABELLED": "0"}, "'analytics.min_labelled' must be at least 1, not 0"),
])
def test_bad_settings_name_the_setting(tmp_path, body, env, message) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(_toml(tmp_path, body), env=env)
    assert message in str(err.value)


@pytest.mark.slow
def test_a_changed_threshold_changes_the_alert(agent_factory, bundles, digits, tmp_path) -> None:
    """400 labels at ~0.65 accuracy against a build-time 0.95: a concept alert by default; none when
    min_labelled asks for more labels (env) or the margin is wider than the drop (file)."""
    x, y = digits[0].astype(np.float32), digits[1]
    drifted = agent_factory("as-1", telemetry=TelemetryConfig(sample_rate=1.0, max_samples_per_s=100000))
    drifted.install(bundles["v2"])
    bad = _windows(drifted, x[:400], y[:400], flip=0.35, seed=2)
    t0 = time.time()
    cases = [(FleetSettings(data_dir=tmp_path / "fleet"), ["concept"]),
             (load_settings(_toml(tmp_path, ""), env={"EDGEFLEET_ANALYTICS_MIN_LABELLED": "1000"}), []),
             (load_settings(_toml(tmp_path, "accuracy_margin = 0.5"), env={}), [])]
    for i, (settings, expected) in enumerate(cases):
        engine = make_engine(f"sqlite:///{tmp_path / f'fleet{i}.db'}")
        init_db(engine)
        with Session(engine) as db:
            _version(db, 2, 0.95)
            _store(db, bad, "as-1", t0, 1)
            raised = [a.reference for a in alerts.evaluate(db, settings, since=t0 - 3600)]
            db.commit()
        engine.dispose()
        assert [r for r in raised if r == "concept"] == expected, (i, raised)
