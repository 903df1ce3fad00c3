"""Model lifecycle through the REST API (issue 16): owner at first upload (required in production
mode) and audited changes; active -> deprecated -> retired with reasons; rollout refusals (409),
rollback-version refused onto a retired version;
the move-off rollout; the revocation list for the next signed key list."""

from __future__ import annotations

from pathlib import Path

from sqlmodel import Session, select

import fleet.migrate as fleet_migrate
from fleet.devsim import make_baseline, make_bundle
from fleet.models import AuditEntry, Device

MIGRATIONS = Path(fleet_migrate.__file__).parent / "migrations" / "versions"

OWNER = {"owner_team": "vision", "owner_contact": "vision@example.com", "oncall": "pagerduty:vision"}


def _upload(fleet, tmp_path, version: int, **params):  # type: ignore[no-untyped-def]
    make_bundle(tmp_path / f"v{version}.tar", fleet.build_key, version=version, baseline=make_baseline(seed=1))
    qs = "&".join(f"{k}={v}" for k, v in params.items())
    return fleet.client.post(f"/api/models?{qs}", headers=fleet.h("operator"),
                             data=(tmp_path / f"v{version}.tar").read_bytes())


def _rollout(fleet, version: int, **extra):  # type: ignore[no-untyped-def]
    spec = {"model_name": "digits", "version": version, "target": {"fleet": fleet.settings.fleet_id},
            "waves": [{"name": "all", "percent": 100}], **extra}
    return fleet.client.post("/api/rollouts", headers=fleet.h("operator"), json=spec)


def _status(fleet, version: int, status: str, reason: str = "because"):  # type: ignore[no-untyped-def]
    return fleet.client.post(f"/api/models/digits/versions/{version}/status", headers=fleet.h("operator"),
                             json={"status": status, "reason": reason})


def test_owner_required_in_production_then_changed_with_audit(fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fleet.ctx.extras["production"] = True
    r = _upload(fleet, tmp_path, 1, owner_team="vision")
    assert r.status_code == 422 and r.json["error"]["code"] == "owner-required"
    assert "owner_contact" in r.json["error"]["message"] and "oncall" in r.json["error"]["message"]
    assert fleet.client.get("/api/models/digits/versions", headers=fleet.h("viewer")).status_code == 404
    assert list(fleet.settings.artifacts_dir.glob(".upload-*")) == []  # nothing left behind
    assert _upload(fleet, tmp_path, 1, **OWNER).status_code == 201
    owner = fleet.client.get("/api/models/digits/owner", headers=fleet.h("viewer")).json
    assert owner["team"] == "vision" and owner["oncall"] == "pagerduty:vision" and owner["review_interval_days"] == 90
    # a later version of a known model needs no owner again, and never overwrites it
    assert _upload(fleet, tmp_path, 2, owner_team="intruder", owner_contact="x", oncall="y").status_code == 201
    assert fleet.client.get("/api/models/digits/owner", headers=fleet.h("viewer")).json["team"] == "vision"
    h = fleet.h("operator")
    assert fleet.client.put("/api/models/digits/owner", headers=fleet.h("viewer"),
                            json={"team": "x", "reason": "r"}).status_code == 403
    assert fleet.client.put("/api/models/digits/owner", headers=h, json={"team": "edge"}).status_code == 400
    r = fleet.client.put("/api/models/digits/owner", headers=h,
                         json={"team": "edge-ml", "review_interval_days": 30, "reason": "team reorg"})
    assert r.status_code == 200 and r.json["team"] == "edge-ml" and r.json["contact"] == "vision@example.com"
    assert fleet.client.put("/api/models/nope/owner", headers=h, json={"reason": "r"}).status_code == 404
    with Session(fleet.ctx.engine) as db:
        rows = db.exec(select(AuditEntry).where(AuditEntry.action == "model.owner").order_by(AuditEntry.id)).all()
    assert [(a.before or {}).get("team") for a in rows] == [None, "vision"]
    assert rows[1].after["team"] == "edge-ml" and rows[1].after["reason"] == "team reorg" and rows[1].actor


def test_status_transitions_and_rollout_refusals(fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    for v in (1, 2, 3):
        assert _upload(fleet, tmp_path, v, **OWNER).status_code == 201
    with Session(fleet.ctx.engine) as db:
        for i in range(3):
            db.add(Device(id=f"lc-d{i}", fleet=fleet.settings.fleet_id, device_class="x86-64-generic",
                          installed_name="digits", installed_version=2 if i < 2 else 3))
        db.commit()
    st = fleet.client.get("/api/models/digits/versions/2/status", headers=fleet.h("viewer")).json
    assert st["status"] == "active"
    assert fleet.client.post("/api/models/digits/versions/2/status", headers=fleet.h("operator"),
                             json={"status": "deprecated"}).status_code == 400  # a reason is required
    assert _status(fleet, 2, "deprecated").status_code == 200
    assert _status(fleet, 2, "deprecated").json["error"]["code"] == "same-status"
    # deprecated: refused without the explicit override, allowed with it (and warned)
    r = _rollout(fleet, 2)
    assert r.status_code == 409 and r.json["error"]["code"] == "version-deprecated"
    r = _rollout(fleet, 2, allow_deprecated=True)
    assert r.status_code == 201 and "deprecated" in r.json["warnings"][0]
    fleet.client.post(f"/api/rollouts/{r.json['id']}/abort", headers=fleet.h("operator"), json={"reason": "t"})
    # retired: final, refused even with the override
    r = _status(fleet, 2, "retired", "CVE in preprocessing")
    assert r.status_code == 200 and {"model": "digits", "version": 2} in r.json["revocations"]
    for extra in ({}, {"allow_deprecated": True}):
        r = _rollout(fleet, 2, **extra)
        assert r.status_code == 409 and r.json["error"]["code"] == "version-retired"
    assert _status(fleet, 2, "active").json["error"]["code"] == "bad-transition"
    assert fleet.client.get("/api/lifecycle/revocations", headers=fleet.h("viewer")).json["revoked"] == \
        [{"model": "digits", "version": 2}]
    # one click: move the devices still on v2 to the newest active version (v3)
    r = fleet.client.post("/api/models/digits/versions/2/move-off", headers=fleet.h("operator"), json={})
    assert r.status_code == 201, r.json
    assert r.json["version"] == 3 and r.json["model_name"] == "digits"
    targets = fleet.client.get(f"/api/rollouts/{r.json['id']}/targets", headers=fleet.h("viewer")).json["targets"]
    assert sorted(t["device_id"] for t in targets) == ["lc-d0", "lc-d1"]
    with Session(fleet.ctx.engine) as db:
        acts = [a.action for a in db.exec(select(AuditEntry).where(AuditEntry.target == "model:digits:v2")
                                          .order_by(AuditEntry.id))]
    assert acts == ["model.deprecated", "model.retired"]
    assert _status(fleet, 9, "retired").status_code == 404


def test_rollback_version_and_move_off_never_target_a_retired_version(fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    for v in (1, 2, 3, 4):
        assert _upload(fleet, tmp_path, v, **OWNER).status_code == 201
    with Session(fleet.ctx.engine) as db:
        for i, (on, prev) in enumerate(((3, 2), (3, 2), (2, 1))):
            db.add(Device(id=f"rb-d{i}", fleet=fleet.settings.fleet_id, device_class="x86-64-generic",
                          installed_name="digits", installed_version=on, previous_version=prev))
        db.commit()
    assert _status(fleet, 2, "retired", "CVE").status_code == 200
    assert _status(fleet, 4, "retired", "bad calibration").status_code == 200
    live = _rollout(fleet, 3)
    assert live.status_code == 201
    # rolling v3 back would send two devices back to retired v2: refused, nothing changed
    op = fleet.h("operator")
    r = fleet.client.post("/api/rollouts/rollback-version", headers=op, json={"model_name": "digits", "version": 3})
    assert r.status_code == 409 and r.json["error"]["code"] == "version-retired" and "v2" in r.json["error"]["message"]
    assert fleet.client.get(f"/api/rollouts/{live.json['id']}", headers=op).json["status"] != "paused"
    # v2 -> v1 (active) is still allowed
    r = fleet.client.post("/api/rollouts/rollback-version", headers=op, json={"model_name": "digits", "version": 2})
    assert r.status_code == 200 and r.json["devices"] == ["rb-d2"], r.json
    fleet.client.post(f"/api/rollouts/{live.json['id']}/abort", headers=op, json={"reason": "t"})
    # move-off v2 skips the newest version (v4, retired) and targets v3
    r = fleet.client.post("/api/models/digits/versions/2/move-off", headers=op, json={})
    assert r.status_code == 201 and r.json["version"] == 3, r.json
    fleet.client.post(f"/api/rollouts/{r.json['id']}/abort", headers=op, json={"reason": "t"})
    assert _status(fleet, 3, "retired", "all gone").status_code == 200
    r = fleet.client.post("/api/models/digits/versions/3/move-off", headers=op, json={})
    assert r.status_code == 201 and r.json["version"] == 1, r.json


def test_migration_0004_upgrades_a_0003_database(db_url) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import inspect, text

    from fleet.db import init_db, make_engine
    from fleet.migrate import current, upgrade

    engine = make_engine(db_url)
    upgrade(engine, "0003")
    assert "model_owner" not in inspect(engine).get_table_names()
    with engine.begin() as conn:  # a row as a 0003 fleet wrote it (today's Device has later columns)
        conn.execute(text("INSERT INTO device (id, fleet, device_class, public_key, key_id, status, enrolled_at,"
                          " state_seq, last_seq, command_seq, mqtt_username, mqtt_password_hash) VALUES"
                          " ('old-device', 'default', 'x86-64-generic', '', '', 'active', 0, 0, 0, 0, '', '')"))
    init_db(engine)
    assert current(engine) == sorted(p.name[:4] for p in MIGRATIONS.glob("0*.py"))[-1]
    assert {"model_owner", "model_version_status", "model_review"} <= set(inspect(engine).get_table_names())
    with Session(engine) as db:
        assert db.get(Device, "old-device") is not None
    engine.dispose()
