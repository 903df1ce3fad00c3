"""Console pages and their JSON without a browser (issue 18): a gate breach raises an open
alert; the overview lists the paused rollout with why, the alerts and the silent device; the
rollout page offers only the actions its state allows; series.json numbers come from the same
telemetry as the drift report; the device page labels installs/rollbacks with their rollout;
the model page marks the paused version with sizes in units; audit filters and exports."""

from __future__ import annotations

import csv
import io
import os
import re
import time
import uuid

import pytest
from sqlmodel import Session, select

from fleet.console import rollout_view
from fleet.models import DriftAlert, ModelOwner, ModelReview
from tests.fleet.console_world import SILENT, build

pytestmark = pytest.mark.slow
OP = {"Authorization": "Bearer operator-token"}
VIEW = {"Authorization": "Bearer viewer-token"}
PG_ADMIN = os.environ.get("EDGEFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test").replace(
    "postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def world(request, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The same fleet on SQLite and on a PostgreSQL database of its own (dropped afterwards)."""
    if request.param == "sqlite":
        yield build(tmp_path_factory.mktemp("console"))
        return
    from sqlalchemy import create_engine, text

    from fleet.ingest.broker import reachable

    if not reachable("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not running at 127.0.0.1:5432")
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    name = f"edgefleet_console_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    w = build(tmp_path_factory.mktemp("console-pg"), PG_ADMIN.rsplit("/", 1)[0] + "/" + name)
    try:
        yield w
    finally:
        w.harness.engine.dispose()
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def text(html: bytes) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html.decode()))


def test_a_breach_raises_an_open_alert_and_the_overview_says_what_is_wrong(world) -> None:
    c = world.app.test_client()
    rid = world.rollout_id
    with Session(world.harness.engine) as s:
        rollout_alerts = s.exec(select(DriftAlert).where(DriftAlert.reference == f"rollout:{rid}")).all()
    assert len(rollout_alerts) == 1 and rollout_alerts[0].status == "open" and rollout_alerts[0].level == "alert"
    assert "prediction_drift" in rollout_alerts[0].summary
    assert c.get("/api/overview", headers=VIEW).get_json()["open_alerts"] >= 1
    assert "No review is overdue" in text(c.get("/console/", headers=VIEW).data)
    with Session(world.harness.engine) as s:   # last reviewed 40 days ago, reviews every 30 days
        s.add(ModelOwner(name="digits", team="vision", review_interval_days=30))
        s.add(ModelReview(name="digits", reviewer="ana", decision="keep", at=time.time() - 40 * 86400))
        s.commit()
    page = text(c.get("/console/", headers=VIEW).data)
    assert "digits review due 10 day(s) ago · vision" in page
    assert "All quiet" not in page and "Needs attention" in page
    assert f"Rollout {rid} · digits v2" in page and "prediction_drift" in page and "(limit ≤ 0.2)" in page
    assert f"rollout {rid} paused" in page and SILENT in page
    alerts_page = c.get("/console/alerts?status=open", headers=VIEW).data.decode()
    assert f'href="/console/rollouts/{rid}"' in alerts_page      # a rollout alert leads to its rollout
    assert "limit ≤ 0.2" in text(c.get("/console/rollouts", headers=VIEW).data)


def test_rollout_page_gate_tables_and_actions_by_state(world) -> None:
    c = world.app.test_client()
    html = c.get(f"/console/rollouts/{world.rollout_id}", headers=OP).data.decode()
    assert '"detail"' not in html and "{&#34;" not in html      # no raw JSON evidence
    ops = re.findall(r'data-op="([a-z]+)"', html)
    assert ops == ["resume", "abort", "rollback"]
    assert 'data-status="rolled-back"' in html and 'data-status="pending"' in html
    assert "What it measures" in html and "prediction distribution" in html
    # viewers get no buttons at all
    assert "data-op=" not in c.get(f"/console/rollouts/{world.rollout_id}", headers=VIEW).data.decode()


@pytest.mark.parametrize("status, allowed", [
    ("running", {"pause", "abort", "rollback"}), ("awaiting-approval", {"approve", "pause", "abort", "rollback"}),
    ("paused", {"resume", "abort", "rollback"}), ("rolled-back", set()), ("completed", {"rollback"}),
])
def test_allowed_actions_follow_the_service_rules(status, allowed) -> None:
    assert set(rollout_view.allowed_actions(status)) == allowed
    assert "pause" not in rollout_view.allowed_actions("paused")


def test_gate_rows_explain_and_format() -> None:
    rows = rollout_view.gate_rows([{"gate": "errors", "status": "fail", "value": 0.05, "threshold": 0.02,
                                    "detail": {"candidate_rate": 0.05, "failed": []}}])
    assert rows[0].rule == "≤ 0.02 (2.0%)" and rows[0].measured == "0.05 (5.0%)" and rows[0].verdict_label == "✗ fail"
    assert "error rate" in rows[0].meaning and rows[0].detail == "candidate rate: 0.05"
    segs = rollout_view.wave_segments({"pending": 3, "rolled-back": 1})
    assert [s["status"] for s in segs] == ["pending", "rolled-back"] and segs[1]["pct"] == 25.0


def test_series_json_for_version_class_cohort_and_device(world) -> None:
    c = world.app.test_client()
    v1 = c.get("/console/series.json?model=digits&version=1&range=24h", headers=VIEW).get_json()
    s = v1["series"]
    assert v1["windows"] >= 30 and len(s["t"]) == len(s["p99_ms"]) == len(s["max_psi"])
    assert s["requests"][0] == 10 * 200            # ten devices, 200 requests each per window
    assert all(p99 >= p50 > 0 for p50, p99 in zip(s["p50_ms"], s["p99_ms"], strict=True))
    assert max(s["max_psi"]) < 0.1                   # v1 is not drifted
    v2 = c.get("/console/series.json?model=digits&version=2", headers=VIEW).get_json()["series"]
    assert v2["max_psi"] and max(v2["max_psi"]) > 0.25   # v2's inputs are
    eu = c.get("/console/series.json?model=digits&version=1&cohort=region=eu", headers=VIEW).get_json()["series"]
    assert 0 < eu["requests"][0] < s["requests"][0]
    cls = c.get("/console/series.json?model=digits&version=1&device_class=x86-64-generic",
                headers=VIEW).get_json()["series"]
    assert cls["requests"] == s["requests"]
    dev = c.get("/console/series.json?device=dev-0001", headers=VIEW).get_json()
    assert dev["filter"]["model"] == "digits" and dev["series"]["requests"][0] == 200
    since = v1["series"]["t"][5]
    narrowed = c.get(f"/console/series.json?model=digits&version=1&since={since}&until={since + 120}",
                     headers=VIEW).get_json()
    assert narrowed["series"]["t"] == v1["series"]["t"][5:7]
    assert c.get("/console/series.json?range=2y", headers=VIEW).status_code == 400
    for bad in ("version=x", f"version={2**63}", "since=1e999", "until=nan", "since=-5"):
        assert c.get(f"/console/series.json?{bad}", headers=VIEW).status_code == 400, bad
    assert c.get("/console/series.json").status_code in (302, 401)


def test_device_page_labels_installs_and_rollbacks_with_their_rollout(world) -> None:
    c = world.app.test_client()
    canary = next(t.device_id for t in world.harness.targets(world.rollout_id) if t.status == "rolled-back")
    page = text(c.get(f"/console/devices/{canary}", headers=VIEW).data)
    assert f"⬆ install digits v2 rollout {world.rollout_id}" in page
    assert f"↩ rollback to digits v1 rollout {world.rollout_id}" in page
    assert f"rollout {world.rollout_id} paused" in page        # its alerts
    assert "Telemetry over time" in page


def test_models_side_by_side_mark_the_paused_version_with_sizes_in_units(world) -> None:
    c = world.app.test_client()
    html = c.get("/console/models/digits", headers=VIEW).data.decode()
    head = html.split('id="version-compare"')[1].split("</thead>")[0]
    assert re.search(r'data-version="2" class="marked">v2<div><span class="badge alert version-mark">‖ paused', head)
    assert "version-mark" not in head.split('data-version="1"')[1]
    assert "1001 B" in html and "KiB" not in html.split("Versions and lineage")[1].split("</table>")[0]


def test_audit_filters_search_and_exports(world) -> None:
    c = world.app.test_client()
    def table(url: str) -> str:
        return text(c.get(url, headers=OP).data).split("Object Change")[1]

    page = table("/console/audit?action=rollout.")
    assert "rollout.breach" in page and "alert.raise" not in page
    page = table("/console/audit?q=prediction_drift")
    assert "rollout.breach" in page and "rollout.create" not in page
    assert "No entry matches" in text(c.get("/console/audit?actor=nobody", headers=OP).data)
    rows = list(csv.DictReader(io.StringIO(c.get("/console/audit.csv?action=rollout.breach", headers=OP)
                                           .data.decode())))
    assert len(rows) == 1 and rows[0]["target"] == f"rollout:{world.rollout_id}" and "prediction_drift" in rows[0]["after"]
    js = c.get(f"/console/audit.json?object=rollout:{world.rollout_id}", headers=OP).get_json()
    assert {"rollout.create", "rollout.breach"} <= {r["action"] for r in js}
    assert c.get("/console/audit.json?since=2000-01-01T00:00&until=2000-01-02", headers=OP).get_json() == []
    assert c.get("/console/audit?since=yesterday", headers=OP).status_code == 400
    assert c.get("/console/audit.csv", headers=VIEW).status_code == 403
