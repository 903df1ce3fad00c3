"""Retraining triggers with human approval: persistent drift across windows and cohorts opens one
request per version; an operator approves (the webhook gets the evidence) or dismisses it; a viewer
cannot; a failing webhook is recorded and can be retried; everything is audited."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from sqlmodel import Session, select

from fleet.drift import retraining
from fleet.models import Aggregate, AuditEntry, DriftAlert, RetrainingRequest

T0 = 1_800_000_000.0


def _drift(db: Session, version: int, cohort: str, window: int, level: str = "alert",
           reference: str = "baseline") -> None:
    ws = T0 + 60 * window
    db.add(Aggregate(model_name="digits", model_version=version, cohort=cohort, window_start=ws, requests=100))
    db.add(DriftAlert(model_name="digits", model_version=version, cohort=cohort, window_start=ws,
                      window_end=ws + 60, reference=reference, level=level, summary=f"{cohort} w{window}"))


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []
    status = 202

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append({"body": json.loads(body), "auth": self.headers.get("Authorization")})
        self.send_response(_Hook.status)
        self.end_headers()
        self.wfile.write(b'{"job": 42}')

    def log_message(self, *a: Any) -> None:
        pass


def test_persistent_drift_opens_one_request(fleet) -> None:  # type: ignore[no-untyped-def]
    s = fleet.ctx.settings
    with Session(fleet.ctx.engine) as db:
        db.add(Aggregate(model_name="digits", model_version=3, cohort="us", window_start=T0, requests=5))
        for w in (0, 1):
            _drift(db, 3, "eu", w)
        _drift(db, 3, "eu", 2, level="warn")              # warnings do not count
        _drift(db, 3, "eu", 3, reference="control:v2")    # nor comparisons with the control
        db.commit()
        assert retraining.check(db, s, at=T0 + 600) == []  # 2 windows < 3
        _drift(db, 3, "eu", 4)
        db.commit()
        (req,) = retraining.check(db, s, at=T0 + 600)
        db.commit()
        assert req.status == "open" and req.evidence["cohorts_alerting"] == ["eu"]
        assert req.evidence["cohorts_reporting"] == ["eu", "us"] and len(req.evidence["windows"]) == 3
        assert retraining.check(db, s, at=T0 + 600) == []  # one live request per version
        assert retraining.check(db, s, at=T0 + 7 * 3600) == []  # outside the lookback: nothing
        assert db.exec(select(AuditEntry).where(AuditEntry.action == "retraining.request")).first() is not None


def test_cohort_share_is_required(fleet) -> None:  # type: ignore[no-untyped-def]
    s = fleet.ctx.settings
    with Session(fleet.ctx.engine) as db:
        for c in ("us", "apac", "latam"):
            db.add(Aggregate(model_name="digits", model_version=4, cohort=c, window_start=T0, requests=5))
        for w in range(4):
            _drift(db, 4, "eu", w)   # one cohort of four: a local problem (sensor, site), not a retrain
        db.commit()
        assert retraining.check(db, s, at=T0 + 600) == []
        s.retrain.min_cohort_share = 0.25
        assert len(retraining.check(db, s, at=T0 + 600)) == 1


def test_approval_calls_the_pipeline_and_is_audited(fleet) -> None:  # type: ignore[no-untyped-def]
    srv = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    s = fleet.ctx.settings
    s.retrain.webhook_url = f"http://127.0.0.1:{srv.server_port}/hooks/retrain"
    s.retrain.webhook_token = "ci-secret"
    _Hook.received.clear()
    try:
        with Session(fleet.ctx.engine) as db:
            for w in range(3):
                _drift(db, 5, "eu", w)
            db.commit()
            (req,) = retraining.check(db, s, at=T0 + 600)
            db.commit()
            rid = req.id
        c = fleet.client
        assert c.get("/api/retraining", headers=fleet.h("viewer")).json["requests"][0]["id"] == rid
        assert c.post(f"/api/retraining/{rid}/approve", headers=fleet.h("viewer")).status_code == 403
        assert _Hook.received == []                       # nothing runs without an operator
        _Hook.status = 500
        r = c.post(f"/api/retraining/{rid}/approve", headers=fleet.h("operator"), json={"note": "new camera"})
        assert r.status_code == 200 and r.json["status"] == "trigger-failed" and r.json["trigger_result"]["status"] == 500
        _Hook.status = 202
        r = c.post(f"/api/retraining/{rid}/approve", headers=fleet.h("operator"), json={"note": "retry"})
        assert r.json["status"] == "triggered" and r.json["decided_by"]
        body = _Hook.received[-1]
        assert body["auth"] == "Bearer ci-secret"
        assert body["body"]["model"] == "digits" and body["body"]["version"] == 5
        assert len(body["body"]["evidence"]["windows"]) == 3 and body["body"]["note"] == "retry"
        assert c.post(f"/api/retraining/{rid}/dismiss", headers=fleet.h("operator")).status_code == 409
        assert c.post("/api/retraining/999999/approve", headers=fleet.h("operator")).status_code == 404
        with Session(fleet.ctx.engine) as db:
            actions = [a.action for a in db.exec(select(AuditEntry).where(AuditEntry.target == f"retraining:{rid}"))]
        assert actions == ["retraining.request", "retraining.approve", "retraining.approve"]
    finally:
        srv.shutdown()


def test_dismiss_from_the_console(fleet) -> None:  # type: ignore[no-untyped-def]
    with Session(fleet.ctx.engine) as db:
        for w in range(3):
            _drift(db, 6, "eu", w)
        db.commit()
        (req,) = retraining.check(db, fleet.ctx.settings, at=T0 + 600)
        db.commit()
        rid = req.id
    c = fleet.client
    c.post("/console/login", data={"token": "operator-token"})
    page = c.get("/console/alerts")
    assert page.status_code == 200 and b"Approve retraining" in page.data and b"digits v6" in page.data
    assert c.post(f"/console/retraining/{rid}/dismiss").status_code == 302
    with Session(fleet.ctx.engine) as db:
        assert db.get(RetrainingRequest, rid).status == "dismissed"
