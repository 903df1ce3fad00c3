"""Issue 15 items 3 and 5 in the catalogue and console: two versions whose class hangs on different
features; the version API returns each version's importance (overall and per slice), the model page
shows importance per version, the change between them and the newest version's importance per eval
slice, and the drift page (fed by a real agent's signed telemetry through the real ingest) shows
the importance-weighted share next to the plain count."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from agent.config import TelemetryConfig
from fleet.devsim import SimDevice
from fleet.ingest.store import Processor
from tests.explain.tabular import eval_rows, tabular_bundle
from tests.fleet.conftest import make_settings

OP, VIEW = {"Authorization": "Bearer operator-token"}, {"Authorization": "Bearer viewer-token"}


def _text(html: bytes) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html.decode()))


def _agent_telemetry(agent_factory: Any, bundle: Path, ctx: Any, settings: Any) -> None:
    """The v2 bundle on a real agent, 1000 eval rows with its deciding feature f3 shifted; the window
    signed and ingested."""
    from fleet.registry.enrolment import create_enrolment_token, enrol

    agent = agent_factory("imp-console-1", telemetry=TelemetryConfig(sample_rate=1.0, max_samples_per_s=10_000))
    agent.install(bundle)
    agent.telemetry.sample_budget = 10_000
    x = eval_rows(1000, seed=3)
    x[:, 3] += 2.0
    for i in range(0, len(x), 200):
        agent.predict({"x": x[i:i + 200]})
    payload = next(p for p in agent.flush_telemetry() if p["model"]["name"] == "tab")
    d = SimDevice(agent.cfg.device_id, fleet=settings.fleet_id)
    with ctx.session() as db:
        tok, _ = create_enrolment_token(db, "t")
    with ctx.session() as db:
        enrol(db, settings, tok, d.public_key_b64, device_id=d.device_id)
    Processor(settings, ctx.engine).process([(d.topic("telemetry"), d.sign(payload))])


def test_version_api_and_model_page_show_importance_and_its_change(db_url, fleet_keys, agent_factory,
                                                                   tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fleet.app import create_app, fleet_context

    settings = make_settings(tmp_path, db_url, fleet_keys["build_pub"])
    app = create_app(settings)
    c, ctx = app.test_client(), fleet_context(app)
    try:
        bundles = {}
        for version, hot in ((1, 7), (2, 3)):
            bundles[version], _ = tabular_bundle(tmp_path / f"tab-v{version}.bundle", fleet_keys["build"], rest=0.0,
                                                 version=version, hot=hot, sliced=version == 2)
            r = c.post("/api/models", headers=OP, data=bundles[version].read_bytes(),
                       content_type="application/octet-stream")
            assert r.status_code == 201, r.json
            assert r.json["explain"]["importance"][0]["feature"] == f"f{hot}"
        v2 = c.get("/api/models/tab/versions/2", headers=VIEW).get_json()
        ex = (v2.get("items") or [v2])[0]["explain"]
        assert ex["method"] == "permutation" and ex["metric"] == "accuracy" and ex["importance"][0]["feature"] == "f3"

        page = c.get("/console/models/tab", headers=VIEW)
        assert page.status_code == 200
        text = _text(page.data)
        assert "What each version relies on" in text and "Δ v2 vs v1" in text
        row3 = re.search(r"f3 ((?:[-+]?\d\.\d{4}|—) ?)+", text)
        row7 = re.search(r"f7 ((?:[-+]?\d\.\d{4}|—) ?)+", text)
        assert row3 and row7, text[-1500:]
        assert row3.group(0).split()[-1].startswith("+") and row7.group(0).split()[-1].startswith("-")
        # per-slice importance of the newest version: one column per eval slice, the deciding feature on top
        assert set(ex["slice_importance"]) == {"north", "south"}
        assert ex["slice_importance"]["north"]["importance"][0]["feature"] == "f3"
        by_slice = re.search(r"By slice \(v2\).*?Feature all north south f3 (\d\.\d{4}) (\d\.\d{4}) (\d\.\d{4})", text)
        assert by_slice, text[-2500:]
        assert all(float(v) > 0.3 for v in by_slice.groups())  # f3 decides the class in both slices

        # the drift page shows the importance-weighted share next to the plain count, and each feature's weight
        _agent_telemetry(agent_factory, bundles[2], ctx, settings)
        drift = _text(c.get("/console/models/tab/2/drift", headers=VIEW).data)
        assert "Drifted importance 100.0% by count 3.1%" in drift and "f3 " in drift, drift[:2500]
        assert re.search(r"f3 \d+\.\d+ imp 1\.000", drift), drift[:2500]
    finally:
        ctx.engine.dispose()
