"""The web console in a real headless browser (Debian's chromium driven by Playwright)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests

from fleet.devsim import SimDevice, make_bundle
from fleet.ingest.store import Processor

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
SHOTS = Path(os.environ.get("EDGEFLEET_SCREENSHOTS", Path(__file__).resolve().parents[2] / "benchmarks" / "out"))


@pytest.fixture
def populated(tmp_path, build_keys, baseline):  # type: ignore[no-untyped-def]
    from fleet.registry.enrolment import create_enrolment_token, enrol
    from fleet.server import FleetServer
    from tests.fleet.conftest import make_settings

    s = make_settings(tmp_path, f"sqlite:///{tmp_path / 'f.db'}", build_keys[1])
    srv = FleetServer(s, port=0, start_ingest=False, drift_evaluator=False).start()
    op = {"Authorization": "Bearer operator-token"}
    for v in (1, 2):
        make_bundle(tmp_path / f"b{v}.tar", build_keys[0], version=v, baseline=baseline)
        assert requests.post(f"{srv.url}/api/models", headers=op, data=(tmp_path / f"b{v}.tar").read_bytes(),
                             timeout=10).status_code == 201
    proc = Processor(s, srv.engine)
    rng = np.random.default_rng(5)
    msgs = []
    for i in range(12):
        region = ["eu-west", "us-east", "ap-south"][i % 3]
        d = SimDevice(f"edge-{region[:2]}-{i:03d}", fleet=s.fleet_id)
        with srv.app.extensions["edgefleet"].session() as db:
            tok, _ = create_enrolment_token(db, "seed")
        with srv.app.extensions["edgefleet"].session() as db:
            enrol(db, s, tok, d.public_key_b64, device_id=d.device_id, device_class=d.device_class,
                  attributes={"region": region, "site": f"s{i % 2}"}, tags=["pilot"] if i < 4 else [])
        version = 2 if i < 6 else 1
        inst = {"name": "digits", "version": version, "manifest_sha256": "a" * 64, "bundle_sha256": "b" * 64}
        msgs.append((d.topic("state"), d.sign(d.state(installed=inst))))
        for w in range(2):
            msgs.append((d.topic("telemetry"), d.sign(d.telemetry(
                rng, baseline, version=version, window_start=1800.0 + 60 * w, n=300,
                shift=0.35 if version == 2 else 0.0, errors=int(rng.integers(0, 3))))))
    proc.process(msgs)
    assert requests.post(f"{srv.url}/api/drift/evaluate", headers=op, timeout=30).status_code == 200
    yield srv
    srv.stop()


@pytest.mark.skipif(not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists(), reason="chromium not installed")
def test_console_renders_devices_and_drift_chart(populated) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    srv = populated
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1320, "height": 900})
            page.goto(f"{srv.url}/console/devices")
            assert "/console/login" in page.url  # not signed in yet
            page.fill("#token", "wrong")
            page.click("button[type=submit]")
            assert page.locator(".flash.bad").is_visible()
            page.fill("#token", "operator-token")
            page.click("button[type=submit]")
            page.wait_for_url("**/console/devices**")
            rows = page.locator("#devices-table tbody tr")
            assert rows.count() == 12
            assert page.locator("#devices-table").inner_text().count("digits v2") == 6
            page.select_option("select[name=device_class]", "x86-64-generic")
            page.fill("input[name='attr.region']", "eu-west")
            page.click("form.filters button")
            page.wait_for_load_state()
            assert page.locator("#devices-table tbody tr").count() == 4
            page.screenshot(path=str(SHOTS / "fleet_console_devices.png"), full_page=True)

            page.click("text=edge-eu-000")
            page.wait_for_url("**/console/devices/edge-eu-000")
            assert "digits v2" in page.locator("section.card").nth(1).inner_text().replace("\n", " ")

            page.goto(f"{srv.url}/console/")
            assert page.locator("#stat-devices").inner_text() == "12"
            page.screenshot(path=str(SHOTS / "fleet_console_overview.png"), full_page=True)

            page.goto(f"{srv.url}/console/models/digits/2/drift")
            assert page.locator("#drift-level").inner_text() == "alert"
            bars = page.locator("svg.psi-chart rect.bar")
            assert bars.count() == 9  # 8 features + the prediction
            widths = [float(bars.nth(i).get_attribute("width")) for i in range(bars.count())]
            assert all(w > 1 for w in widths)
            box = page.locator("svg.psi-chart").bounding_box()
            assert box and box["width"] > 500 and box["height"] > 150  # really drawn, not collapsed
            assert page.locator(".hists figure").count() == 8
            page.screenshot(path=str(SHOTS / "fleet_console_drift.png"), full_page=True)

            page.goto(f"{srv.url}/console/alerts?status=open")
            n_open = page.locator("button:has-text('Acknowledge')").count()
            assert n_open >= 1
            page.locator("button:has-text('Acknowledge')").first.click()
            page.wait_for_load_state()
            page.goto(f"{srv.url}/console/alerts?status=open")
            assert page.locator("button:has-text('Acknowledge')").count() == n_open - 1
            page.goto(f"{srv.url}/console/audit")
            assert "alert.acknowledge" in page.content()
            page.goto(f"{srv.url}/console/models/digits")
            assert "digits v1" in page.content()  # lineage: v2 comes from v1
            assert page.locator(".passes").first.inner_text().split() == ["export", "→", "quantize", "→", "evaluate"]
            page.screenshot(path=str(SHOTS / "fleet_console_model.png"), full_page=True)
        finally:
            browser.close()
