"""The console as an operator sees it, in Debian's chromium driven by Playwright, against a fleet
with a paused rollout (drift breach at the canary), a rolled-back canary, drifted features and
a silent device (issue 18). Screenshots go to the test's tmp dir (EDGEFLEET_SCREENSHOTS to keep
them elsewhere)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fleet.console_world import SILENT, build

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture
def world(tmp_path):  # type: ignore[no-untyped-def]
    w = build(tmp_path).serve()
    yield w
    w.stop()


@pytest.fixture
def page(world, tmp_path):  # type: ignore[no-untyped-def]
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1320, "height": 900})
            pg.goto(f"{world.url}/console/login")
            pg.fill("#token", "operator-token")
            pg.click("button[type=submit]")
            pg.wait_for_url("**/console/")
            yield pg
        finally:
            browser.close()


def shots(tmp_path: Path) -> Path:
    d = Path(os.environ.get("EDGEFLEET_SCREENSHOTS") or tmp_path / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_operator_sees_what_is_wrong_and_only_allowed_actions(world, page, tmp_path):  # type: ignore[no-untyped-def]
    out = shots(tmp_path)
    rid = world.rollout_id
    reason = world.harness.rollout(rid).reason
    breached = {g["gate"]: g for g in reason["gates"]}
    assert "prediction_drift" in breached

    # overview: the paused rollout with why, its alert, the silent device; never "All quiet"
    page.goto(f"{world.url}/console/")
    paused = page.locator("#paused-rollouts").inner_text()
    assert f"Rollout {rid}" in paused and "prediction_drift" in paused and "limit ≤ 0.2" in paused
    alerts_txt = page.locator("#open-alerts").inner_text()
    assert f"rollout {rid} paused" in alerts_txt and "features drifted vs baseline" in alerts_txt
    assert SILENT in page.locator("#silent-devices").inner_text()
    assert "All quiet" not in page.content()
    page.screenshot(path=str(out / "console_overview.png"), full_page=True)

    # keyboard: the first Tab reaches the skip link, which is then visible and outlined
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    assert page.locator("link[rel=icon]").count() == 1
    assert page.request.get(world.url + page.locator("link[rel=icon]").get_attribute("href")).ok

    # rollout page: gate table with the stored values, distinct wave colours and patterns, allowed actions
    page.click(f"#paused-rollouts a:has-text('Rollout {rid}')")
    page.wait_for_url(f"**/console/rollouts/{rid}")
    row = page.locator("#breach-gates tr[data-gate=prediction_drift]")
    assert row.locator(".threshold").inner_text() == f"≤ {breached['prediction_drift']['threshold']:.4g}"
    assert row.locator(".measured").inner_text() == f"{breached['prediction_drift']['value']:.4g}"
    assert "✗ fail" in row.inner_text() and "prediction distribution" in row.inner_text()
    assert page.locator(".gates-card tr[data-gate=latency_p99] .measured").inner_text().endswith("×")

    def style(sel: str) -> tuple[str, str]:
        el = page.locator(sel).first
        return (el.evaluate("e => getComputedStyle(e).backgroundColor"),
                el.evaluate("e => getComputedStyle(e).backgroundImage"))

    rolled, pending = style("#waves-table .seg[data-status=rolled-back]"), style("#waves-table .seg[data-status=pending]")
    assert rolled[0] != pending[0] and rolled[1] != pending[1] and "none" not in (rolled[1], pending[1])
    assert "rolled back 2" in page.locator("#waves-table tr[data-wave='0']").inner_text()
    assert "pending" in page.locator("#waves-table tr[data-wave='1']").inner_text()
    assert page.locator("#waves-table tr[data-wave='0'] td").nth(6).inner_text().startswith("20")  # start time
    ops = page.locator("#rollout-actions button").evaluate_all("bs => bs.map(b => b.dataset.op)")
    assert ops == ["resume", "abort", "rollback"]
    n_gates = page.locator("#gate-history .gate-plot").count()
    assert n_gates >= 5      # gate values over time, drawn by uPlot
    page.wait_for_function(f"document.querySelectorAll('#gate-history .gate-plot canvas').length == {n_gates}")
    page.screenshot(path=str(out / "console_rollout.png"), full_page=True)

    # acting moves the state and the buttons with it
    page.click("#rollout-actions button[data-op=abort]")
    page.wait_for_url(f"**/console/rollouts/{rid}")
    assert page.locator("#rollout-status").inner_text() == "aborted"
    assert page.locator("#rollout-actions button").evaluate_all("bs => bs.map(b => b.dataset.op)") == ["rollback"]


def test_time_series_panels_draw_with_uplot(world, page, tmp_path):  # type: ignore[no-untyped-def]
    out = shots(tmp_path)
    page.goto(f"{world.url}/console/series?model=digits&version=1&range=24h")
    page.wait_for_function("document.querySelectorAll('.plot canvas').length >= 4")
    assert int(page.locator("#plot-latency").get_attribute("data-points")) >= 3
    assert "telemetry windows" in page.locator("#series-summary").inner_text()
    # the picker: choosing a device and submitting narrows the series to that device
    page.fill("#f-device", "dev-0001")
    page.click("#series-form button")
    page.wait_for_url("**device=dev-0001**")
    page.wait_for_function("document.querySelectorAll('.plot canvas').length >= 4")
    assert "device dev-0001" in page.locator("h1").inner_text()
    page.screenshot(path=str(out / "console_series.png"), full_page=True)


def test_device_models_and_audit_pages(world, page, tmp_path):  # type: ignore[no-untyped-def]
    out = shots(tmp_path)
    rid = world.rollout_id
    canary = next(t.device_id for t in world.harness.targets(rid) if t.status == "rolled-back")
    page.goto(f"{world.url}/console/devices/{canary}")
    page.wait_for_function("document.querySelectorAll('#device-telemetry .plot canvas').length == 3")
    kinds = page.locator("#device-changes tr[data-kind]").evaluate_all("rs => rs.map(r => r.dataset.kind)")
    assert "install" in kinds and "rollback" in kinds
    assert f"rollout {rid}" in page.locator("#device-changes").inner_text()
    assert f"rollout {rid} paused" in page.locator("#device-alerts").inner_text()
    page.screenshot(path=str(out / "console_device.png"), full_page=True)

    page.goto(f"{world.url}/console/models/digits")
    marked = page.locator("#version-compare th.marked")
    assert marked.count() == 1 and "v2" in marked.inner_text().lower() and "paused" in marked.inner_text().lower()
    assert page.locator("#version-compare .size").first.inner_text().endswith(" B")
    page.screenshot(path=str(out / "console_model.png"), full_page=True)

    page.goto(f"{world.url}/console/audit")
    page.select_option("#a-action", "rollout.")
    page.fill("#a-q", "breach")
    page.click("#audit-filters button")
    page.wait_for_url("**action=rollout.**")
    assert page.locator("#audit-table tbody tr").count() == 1
    with page.expect_download() as dl:
        page.click("#export-csv")
    body = Path(dl.value.path()).read_text()
    assert body.splitlines()[0].startswith("id,at,at_utc,actor,action") and "rollout.breach" in body
    page.screenshot(path=str(out / "console_audit.png"), full_page=True)
