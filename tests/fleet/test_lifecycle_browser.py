"""Issue 16 in Chromium: an operator opens a version's model card, retires it with a reason
(the badge turns), and moves the devices off it with one click (a rollout of the newest active
version); a viewer sees the card without the actions."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session

from fleet.devsim import make_baseline, make_bundle
from fleet.models import Device
from fleet.server import FleetServer
from tests.fleet.conftest import make_settings

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def test_retire_and_move_off_in_the_browser(tmp_path, build_keys) -> None:  # type: ignore[no-untyped-def]
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed")
    import urllib.request

    s = make_settings(tmp_path, f"sqlite:///{tmp_path / 'f.db'}", build_keys[1], start_ingest=False)
    srv = FleetServer(s, port=0, start_ingest=False, drift_evaluator=False).start()
    try:
        for v in (1, 2):
            make_bundle(tmp_path / f"v{v}.tar", build_keys[0], version=v, baseline=make_baseline(seed=1))
            req = urllib.request.Request(f"{srv.url}/api/models?owner_team=vision&owner_contact=v%40x&oncall=pd",
                                         data=(tmp_path / f"v{v}.tar").read_bytes(), method="POST",
                                         headers={"Authorization": "Bearer operator-token"})
            urllib.request.urlopen(req, timeout=10).close()
        with Session(srv.engine) as db:
            db.add(Device(id="br-d1", fleet=s.fleet_id, device_class="x86-64-generic", installed_name="digits",
                          installed_version=1))
            db.commit()
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                pg = browser.new_page()
                for token in ("viewer-token", "operator-token"):
                    pg.goto(f"{srv.url}/console/login")
                    pg.fill("#token", token)
                    pg.click("button[type=submit]")
                    pg.wait_for_url("**/console/")
                    pg.goto(f"{srv.url}/console/models/digits/1/card")
                    assert pg.inner_text("#status-badge") == "active"
                    assert "vision" in pg.inner_text("#intended-use")
                    assert pg.locator("#lifecycle-actions").count() == (0 if token == "viewer-token" else 1)
                pg.fill("input[name=reason]", "CVE-2026-1 in preprocessing")
                pg.click("button[value=retired]")
                pg.wait_for_selector("#move-off")
                assert pg.inner_text("#status-badge") == "retired"
                assert "CVE-2026-1" in pg.content()
                pg.click("#move-off")
                pg.wait_for_url("**/console/rollouts/*")
                assert "digits" in pg.content() and "v2" in pg.content()
            finally:
                browser.close()
    finally:
        srv.stop()
