"""Issue 16: scheduled reviews (who, when, decision, notes; overdue -> gauge, audit and an open
alert, once per missed date, closed by the next review), the model's history, and retention by
age run by the fleet's housekeeping."""

from __future__ import annotations

import time

from sqlmodel import Session, select

from fleet.catalogue import housekeeping
from fleet.devsim import make_baseline, make_bundle
from fleet.models import Aggregate, AuditEntry, DeviceEvent, DeviceVersionWindows, TelemetryWindow

DAY = 86400.0


def _upload(fleet, tmp_path, version: int) -> None:  # type: ignore[no-untyped-def]
    make_bundle(tmp_path / f"v{version}.tar", fleet.build_key, version=version, baseline=make_baseline(seed=1))
    r = fleet.client.post("/api/models?owner_team=vision&owner_contact=v@example.com&oncall=pd",
                          headers=fleet.h("operator"), data=(tmp_path / f"v{version}.tar").read_bytes())
    assert r.status_code == 201, r.json


def _gauge(fleet) -> float:  # type: ignore[no-untyped-def]
    text = fleet.client.get("/metrics").get_data(as_text=True)
    line = next(x for x in text.splitlines() if x.startswith("edgefleet_model_reviews_overdue "))
    return float(line.split()[1])


def test_reviews_overdue_history(fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c, op, view = fleet.client, fleet.h("operator"), fleet.h("viewer")
    _upload(fleet, tmp_path, 1)
    _upload(fleet, tmp_path, 2)
    sched = c.get("/api/models/digits/reviews", headers=view).json["schedule"]
    assert sched["interval_days"] == 90 and not sched["overdue"] and sched["last_review_at"] is None
    assert c.post("/api/models/digits/reviews", headers=op, json={"decision": "shrug"}).status_code == 400
    r = c.post("/api/models/digits/reviews", headers=op, json={"decision": "retire"})
    assert r.status_code == 400 and r.json["error"]["code"] == "version-required"
    assert c.post("/api/models/digits/reviews", headers=view, json={"decision": "keep"}).status_code == 403
    r = c.post("/api/models/digits/reviews", headers=op, json={"decision": "keep", "notes": "field accuracy ok"})
    assert r.status_code == 201 and r.json["reviewer"] and r.json["next"]["due_at"] > time.time() + 89 * DAY
    c.put("/api/models/digits/owner", headers=op, json={"review_interval_days": 30, "reason": "high risk"})

    # 31 days later the review is overdue: the scheduled check sets the gauge and audits it once
    later = time.time() + 31 * DAY
    for _ in range(2):
        assert housekeeping.run_once(fleet.ctx, later)["overdue_reviews"] == ["digits"]
    assert _gauge(fleet) == 1.0
    with Session(fleet.ctx.engine) as db:
        raised = db.exec(select(AuditEntry).where(AuditEntry.action == "model.review-overdue")).all()
    assert len(raised) == 1 and raised[0].after["interval_days"] == 30
    # ... and raises one open alert (not one per tick), listed by /api/alerts
    alerts = c.get("/api/alerts?status=open&model=digits", headers=view).json["items"]
    assert [(a["reference"], a["version"], a["status"]) for a in alerts] == [("review:digits", 2, "open")]
    assert "overdue" in alerts[0]["summary"]
    # a retire decision retires the version it names; the review resets the schedule
    r = c.post("/api/models/digits/reviews", headers=op, json={"decision": "retire", "version": 1,
                                                                 "notes": "superseded by v2"})
    assert r.status_code == 201
    assert c.get("/api/models/digits/versions/1/status", headers=view).json["status"] == "retired"
    # the recorded review closed the overdue alert
    closed = c.get(f"/api/alerts/{alerts[0]['id']}", headers=view).json
    assert closed["status"] == "resolved" and closed["acknowledged_by"]
    assert c.get("/api/alerts?status=open&model=digits", headers=view).json["items"] == []
    assert housekeeping.run_once(fleet.ctx)["overdue_reviews"] == [] and _gauge(fleet) == 0.0
    reviews = c.get("/api/models/digits/reviews", headers=view).json["items"]
    assert [x["decision"] for x in reviews] == ["retire", "keep"] and reviews[1]["notes"] == "field accuracy ok"
    actions = [h["action"] for h in c.get("/api/models/digits/history", headers=view).json["items"]]
    for a in ("model.upload", "model.owner", "model.review", "model.review-overdue", "model.retired"):
        assert a in actions
    assert c.get("/api/lifecycle/reviews", headers=view).json["overdue"] == 0


def test_retention_by_age(fleet) -> None:  # type: ignore[no-untyped-def]
    now = time.time()
    old, new = now - 500 * DAY, now - 1 * DAY
    with Session(fleet.ctx.engine) as db:
        for i, t in enumerate((old, new)):
            db.add(TelemetryWindow(device_id="d", seq=i, window_start=t, window_end=t + 60, model_name="m",
                                   model_version=1, received_at=t))
            db.add(Aggregate(model_name="m", model_version=1, window_start=t))
            db.add(DeviceVersionWindows(device_id=f"d{i}", model_name="m", role="active", model_version=1,
                                        first_start=t, last_end=t + 60, windows=3))
            db.add(DeviceEvent(device_id="d", seq=i, time=t, kind="install-ok", received_at=t))
            db.add(AuditEntry(actor="x", action="test.old" if t == old else "test.new", at=t))
        db.commit()
    out = housekeeping.run_once(fleet.ctx, now)
    assert out["deleted"] == {"raw telemetry windows": 1, "telemetry aggregates": 1, "device window counts": 1,
                              "device events": 1}
    with Session(fleet.ctx.engine) as db:
        assert len(db.exec(select(TelemetryWindow)).all()) == 1 and len(db.exec(select(Aggregate)).all()) == 1
        assert [r.device_id for r in db.exec(select(DeviceVersionWindows)).all()] == ["d1"]  # the recent one
        assert len(db.exec(select(DeviceEvent)).all()) == 1
        assert db.exec(select(AuditEntry).where(AuditEntry.action == "test.old")).first() is not None  # kept
        assert db.exec(select(AuditEntry).where(AuditEntry.action == "retention.apply")).first() is not None
    fleet.settings.lifecycle.audit_retention_days = 365
    assert housekeeping.run_once(fleet.ctx, now)["deleted"]["audit entries"] == 1
    with Session(fleet.ctx.engine) as db:
        assert db.exec(select(AuditEntry).where(AuditEntry.action == "test.old")).first() is None
        assert db.exec(select(AuditEntry).where(AuditEntry.action == "test.new")).first() is not None


def test_serve_runs_housekeeping_on_schedule(tmp_path, build_keys) -> None:  # type: ignore[no-untyped-def]
    from fleet.server import FleetServer
    from tests.fleet.conftest import make_settings
    from tests.waiting import wait_for

    s = make_settings(tmp_path, f"sqlite:///{tmp_path / 'f.db'}", build_keys[1], start_ingest=False)
    s.lifecycle.housekeeping_interval_s = 1.0
    srv = FleetServer(s, port=0, start_ingest=False, drift_evaluator=False).start()
    try:
        with Session(srv.engine) as db:
            db.add(Aggregate(model_name="m", model_version=1, window_start=time.time() - 500 * DAY))
            db.commit()

        def gone() -> bool:
            with Session(srv.engine) as db:
                return db.exec(select(Aggregate)).first() is None
        wait_for(gone, 15, "housekeeping deleted the old aggregate")
    finally:
        srv.stop()
