"""Issue 14 item 8: the console's time series carry online accuracy (with its Wilson interval),
the label-free estimate, the low-confidence rate and accuracy per slice beside drift, per window,
from the analytics engine over the same windows. The outcome and confidence blocks are made by
the agent's own code (agent.outcomes.OutcomeWindow, agent.confidence.ConfidenceStats)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlmodel import Session, select

from tests.fleet.console_world import ConsoleWorld, build

pytest.importorskip("fleet.analytics.quality", reason="the analytics engine (issue 14 items 4-5) is not here")
VIEW = {"Authorization": "Bearer viewer-token"}


def _blocks(truth: dict[str, tuple[int, int]], low: int, high: int) -> dict[str, Any]:
    from agent.confidence import ConfidenceStats, MonitorSpec
    from agent.outcomes import OutcomeWindow

    out = OutcomeWindow(MonitorSpec(n_classes=10, min_slice_count=1))
    for key, (n, ok) in truth.items():
        for i in range(n):
            out.add(("rid", 1, 3 if i < ok else 4, None, 9, key), 3)
    conf = ConfidenceStats()
    conf.add(np.full(high, 0.95), np.full(high, 0.9))
    conf.add(np.full(low, 0.3), np.full(low, 0.05))
    return {"confidence": conf.to_dict(), "outcomes": out.to_dict()}


def _with_outcomes(tmp_path: Path) -> tuple[ConsoleWorld, list[float]]:
    """Two v1 windows get labelled outcomes: the first good, the second worse in region=us."""
    from fleet.app import fleet_context
    from fleet.models import Aggregate

    world = build(tmp_path)
    blocks = [_blocks({"region=eu": (100, 95), "region=us": (100, 93)}, 10, 190),
              _blocks({"region=eu": (100, 94), "region=us": (100, 60)}, 80, 120)]
    with Session(fleet_context(world.app).engine) as db:
        rows = list(db.exec(select(Aggregate).where(Aggregate.model_version == 1).order_by(Aggregate.window_start)))
        starts = sorted({a.window_start for a in rows})[-2:]
        for ws, extra in zip(starts, blocks, strict=True):
            first = next(a for a in rows if a.window_start == ws)
            first.payload = {**first.payload, **extra}
            db.add(first)
        db.commit()
    return world, starts


def test_series_json_carries_accuracy_confidence_and_slices(tmp_path: Path) -> None:
    from fleet.app import fleet_context

    world, starts = _with_outcomes(tmp_path)
    try:
        doc = world.app.test_client().get("/console/series.json?model=digits&version=1&range=24h",
                                          headers=VIEW).get_json()
        s, t = doc["series"], doc["series"]["t"]
        i, j = t.index(starts[0]), t.index(starts[1])
        assert s["accuracy"][i] == pytest.approx(188 / 200) and s["accuracy"][j] == pytest.approx(154 / 200)
        assert s["accuracy_low"][j] < s["accuracy"][j] < s["accuracy_high"][j]
        assert s["labelled"][i] == 200 and s["low_confidence_rate"][j] == pytest.approx(0.4)
        assert s["accuracy_estimate"][i] is not None
        # windows without outcomes have no accuracy (not zero)
        assert s["accuracy"][0] is None and s["labelled"][0] is None
        assert set(doc["slices"]) == {"region=eu", "region=us"}
        us = doc["slices"]["region=us"]
        assert len(us) == len(t) and us[i] == pytest.approx(0.93) and us[j] == pytest.approx(0.60)
        assert us[0] is None
        # drift stays beside it, on the same windows
        assert len(s["max_psi"]) == len(t)
    finally:
        fleet_context(world.app).engine.dispose()


@pytest.mark.browser
@pytest.mark.slow
def test_accuracy_and_slice_panels_draw(tmp_path: Path) -> None:
    from fleet.app import fleet_context
    from tests.fleet.test_console_browser import ARGS, CHROMIUM

    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium not installed (make browser)")
    world, _ = _with_outcomes(tmp_path)
    world.serve()
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                pg = browser.new_page(viewport={"width": 1320, "height": 1400})
                pg.goto(f"{world.url}/console/login")
                pg.fill("#token", "viewer-token")
                pg.click("button[type=submit]")
                pg.wait_for_url("**/console/")
                pg.goto(f"{world.url}/console/series?model=digits&version=1&range=24h")
                pg.wait_for_function("document.querySelector('#plot-slices canvas') !== null")
                for panel in ("#plot-accuracy", "#plot-confidence", "#plot-slices", "#plot-drift"):
                    assert pg.locator(f"{panel} canvas").count() >= 1, panel
                legend = pg.locator("#plot-slices .u-legend").inner_text().lower()  # CSS upper-cases it
                assert "region=eu" in legend and "region=us" in legend
                assert "estimate (cbpe)" in pg.locator("#plot-accuracy .u-legend").inner_text().lower()
                pg.screenshot(path=str(tmp_path / "console_accuracy.png"), full_page=True)
            finally:
                browser.close()
    finally:
        world.stop()
        fleet_context(world.app).engine.dispose()
