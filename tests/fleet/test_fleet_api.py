"""REST API: roles, enrolment, catalogue upload and artifacts with Range, errors, pagination, audit."""

from __future__ import annotations

import hashlib
import io

import pytest
from sqlmodel import Session, select

from agent.keys import generate_keypair, load_private_key
from fleet.devsim import SimDevice, make_bundle
from fleet.models import ApiToken, AuditEntry, Device, EnrolmentToken


def _enrol(fleet, device_id: str, **body) -> dict:  # type: ignore[no-untyped-def,type-arg]
    tok = fleet.client.post("/api/enrolment-tokens", headers=fleet.h("operator"), json={}).json["token"]
    dev = SimDevice(device_id)
    r = fleet.client.post("/api/enrol", json={"token": tok, "public_key": dev.public_key_b64,
                                              "device_id": device_id, **body})
    assert r.status_code == 201, r.json
    return r.json


def test_role_checks(fleet) -> None:  # type: ignore[no-untyped-def]
    c = fleet.client
    assert c.get("/api/devices").status_code == 401
    assert c.get("/api/devices", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert c.get("/api/devices", headers=fleet.h("viewer")).status_code == 200
    r = c.post("/api/enrolment-tokens", headers=fleet.h("viewer"), json={})
    assert r.status_code == 403 and r.json["error"]["code"] == "forbidden"
    assert c.post("/api/enrolment-tokens", headers=fleet.h("operator"), json={}).status_code == 201
    assert c.get("/api/audit", headers=fleet.h("viewer")).status_code == 403
    assert c.post("/api/tokens", headers=fleet.h("operator"), json={"name": "x", "role": "viewer"}).status_code == 403
    r = c.post("/api/tokens", headers=fleet.h("admin"), json={"name": "ci", "role": "operator"})
    assert r.status_code == 201
    token, tid = r.json["token"], r.json["id"]
    with Session(fleet.ctx.engine) as db:
        row = db.get(ApiToken, tid)
        assert row.token_hash == hashlib.sha256(token.encode()).hexdigest() and token not in row.token_hash
    hdr = {"Authorization": f"Bearer {token}"}
    assert c.post("/api/enrolment-tokens", headers=hdr, json={}).status_code == 201
    assert c.delete(f"/api/tokens/{tid}", headers=fleet.h("admin")).status_code == 200
    assert c.get("/api/devices", headers=hdr).status_code == 401
    with Session(fleet.ctx.engine) as db:
        actions = [e.action for e in db.exec(select(AuditEntry))]
        assert {"token.create", "token.revoke", "enrolment-token.create"} <= set(actions)
        blob = str([(e.before, e.after) for e in db.exec(select(AuditEntry))])
        assert token not in blob


def test_enrolment_is_one_time_and_returns_identity(fleet) -> None:  # type: ignore[no-untyped-def]
    c = fleet.client
    r = c.post("/api/enrolment-tokens", headers=fleet.h("operator"),
               json={"device_class": "rpi4-arm64", "attributes": {"region": "eu", "site": "lab"}, "tags": ["pilot"]})
    tok = r.json["token"]
    dev = SimDevice("cam-1")
    body = {"token": tok, "public_key": dev.public_key_b64, "device_id": "cam-1", "tags": ["door"]}
    r = c.post("/api/enrol", json=body)
    assert r.status_code == 201
    j = r.json
    assert j["device_id"] == "cam-1" and j["fleet"] == fleet.settings.fleet_id
    assert j["mqtt"]["username"] == "cam-1" and len(j["mqtt"]["password"]) > 20
    assert j["device"]["device_class"] == "rpi4-arm64" and j["device"]["attributes"] == {"region": "eu", "site": "lab"}
    assert j["device"]["tags"] == ["door", "pilot"] and j["fleet_keys"]
    again = c.post("/api/enrol", json={**body, "device_id": "cam-2"})
    assert again.status_code == 403 and again.json["error"]["code"] == "invalid-token"
    with Session(fleet.ctx.engine) as db:
        d = db.get(Device, "cam-1")
        assert d.mqtt_password_hash and j["mqtt"]["password"] not in d.mqtt_password_hash
        assert tok not in str([t.token_hash for t in db.exec(select(EnrolmentToken))])
    expired = c.post("/api/enrolment-tokens", headers=fleet.h("operator"), json={"ttl_s": 0.001}).json["token"]
    import time

    time.sleep(0.01)
    assert c.post("/api/enrol", json={**body, "token": expired, "device_id": "cam-3"}).status_code == 403
    assert c.post("/api/enrol", json={"token": "x"}).status_code == 400
    bad_key = c.post("/api/enrolment-tokens", headers=fleet.h("operator"), json={}).json["token"]
    assert c.post("/api/enrol", json={"token": bad_key, "public_key": "!!"}).json["error"]["code"] == "bad-public-key"


def test_devices_filters_pagination_and_decommission(fleet) -> None:  # type: ignore[no-untyped-def]
    for i in range(7):
        _enrol(fleet, f"dev-{i:02d}", attributes={"region": "eu" if i < 4 else "us"}, tags=["odd"] if i % 2 else [],
               device_class="x86-64-generic")
    c, h = fleet.client, fleet.h("viewer")
    page1 = c.get("/api/devices?limit=3", headers=h).json
    assert page1["total"] == 7 and [d["id"] for d in page1["items"]] == ["dev-00", "dev-01", "dev-02"]
    assert page1["next_offset"] == 3
    last = c.get("/api/devices?limit=3&offset=6", headers=h).json
    assert [d["id"] for d in last["items"]] == ["dev-06"] and last["next_offset"] is None
    eu = c.get("/api/devices?attr.region=eu", headers=h).json
    assert eu["total"] == 4
    odd_us = c.get("/api/devices?attr.region=us&tag=odd", headers=h).json
    assert [d["id"] for d in odd_us["items"]] == ["dev-05"]
    assert c.get("/api/devices?limit=0", headers=h).status_code == 400
    assert c.get("/api/devices/nope", headers=h).json["error"]["code"] == "not-found"
    r = c.patch("/api/devices/dev-01", headers=fleet.h("operator"), json={"attributes": {"region": "ap"}})
    assert r.status_code == 200 and r.json["attributes"] == {"region": "ap"}
    assert c.post("/api/devices/dev-01/decommission", headers=h).status_code == 403
    r = c.post("/api/devices/dev-01/decommission", headers=fleet.h("operator"))
    assert r.json["status"] == "decommissioned"
    assert c.get("/api/devices?status=decommissioned", headers=h).json["total"] == 1
    audit = c.get("/api/audit?target=device:dev-01", headers=fleet.h("operator")).json["items"]
    assert [a["action"] for a in audit] == ["device.decommission", "device.update", "device.enrol"]
    assert audit[0]["before"]["status"] == "active" and audit[0]["after"]["status"] == "decommissioned"


def test_upload_verify_versions_and_ranged_artifacts(fleet, baseline, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c, op = fleet.client, fleet.h("operator")
    b1 = make_bundle(tmp_path / "d1.tar", fleet.build_key, version=1, baseline=baseline)
    data = (tmp_path / "d1.tar").read_bytes()
    assert c.post("/api/models", headers=fleet.h("viewer"), data=data).status_code == 403
    r = c.post("/api/models", headers=op, data=data, content_type="application/octet-stream")
    assert r.status_code == 201, r.json
    assert r.json["bundle_sha256"] == b1.bundle_sha256 == hashlib.sha256(data).hexdigest()
    assert r.json["lineage"]["provenance"]["source"] == "digits.pt" and r.json["metrics"]["accuracy"] > 0.9
    assert c.post("/api/models", headers=op, data=data).status_code == 200  # idempotent
    make_bundle(tmp_path / "d2.tar", fleet.build_key, version=2, baseline=baseline)
    r = c.post("/api/models", headers=op, data={"bundle": (io.BytesIO((tmp_path / "d2.tar").read_bytes()), "d2.tar")},
               content_type="multipart/form-data")
    assert r.status_code == 201 and r.json["lineage"]["parent"] == "digits v1"
    assert r.json["lineage"]["passes"] == ["export", "quantize", "evaluate"]
    assert {"key": "tools.onnx", "value": "1.17"} in r.json["lineage"]["facts"]
    # same name/version/class with other bytes: conflict
    make_bundle(tmp_path / "d2b.tar", fleet.build_key, version=2, baseline=baseline, payload_bytes=b"other")
    r = c.post("/api/models", headers=op, data=(tmp_path / "d2b.tar").read_bytes())
    assert r.status_code == 409 and r.json["error"]["code"] == "version-exists"
    # tampered and untrusted bundles are refused
    tampered = bytearray(data)
    tampered[-2000] ^= 1
    r = c.post("/api/models", headers=op, data=bytes(tampered))
    assert r.status_code == 422 and r.json["error"]["code"].startswith("bundle-")
    priv, _ = generate_keypair(tmp_path / "k", "rogue")
    make_bundle(tmp_path / "rogue.tar", load_private_key(priv), version=3, baseline=baseline)
    r = c.post("/api/models", headers=op, data=(tmp_path / "rogue.tar").read_bytes())
    assert r.status_code == 422 and r.json["error"]["code"] == "bundle-unknown-key"
    versions = c.get("/api/models/digits/versions", headers=fleet.h("viewer")).json
    assert [v["version"] for v in versions["items"]] == [2, 1]
    assert c.get("/api/models", headers=fleet.h("viewer")).json["items"][0]["versions"] == [1, 2]
    # content-addressed storage, resumable download
    url = f"/artifacts/{b1.bundle_sha256}"
    full = c.get(url)
    assert full.status_code == 200 and full.data == data and full.headers["Accept-Ranges"] == "bytes"
    part = c.get(url, headers={"Range": "bytes=100-"})
    assert part.status_code == 206 and part.data == data[100:]
    assert part.headers["Content-Range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
    mid = c.get(url, headers={"Range": "bytes=10-19"})
    assert mid.status_code == 206 and mid.data == data[10:20]
    assert c.get(url, headers={"Range": f"bytes={len(data) + 5}-"}).status_code == 416
    assert c.get("/artifacts/" + "0" * 64).status_code == 404
    assert c.get("/artifacts/../../etc/passwd").status_code == 404
    assert c.get("/artifacts/XYZ").json["error"]["code"] == "bad-digest"
    assert (fleet.settings.artifacts_dir / b1.bundle_sha256).is_file()


def test_errors_are_json_and_openapi_lists_routes(fleet) -> None:  # type: ignore[no-untyped-def]
    c = fleet.client
    r = c.get("/api/nothing-here")
    assert r.status_code == 404 and r.json["error"]["code"] == "not-found"
    r = c.put("/api/devices", headers=fleet.h())
    assert r.status_code == 405 and "error" in r.json
    r = c.post("/api/tokens", headers=fleet.h(), data="not json", content_type="application/json")
    assert r.status_code == 400 and "Traceback" not in r.get_data(as_text=True)
    spec = c.get("/api/openapi.json").json
    assert spec["openapi"].startswith("3.")
    for path in ("/api/devices", "/api/devices/{device_id}/decommission", "/api/models", "/api/enrol",
                 "/api/models/{name}/versions/{version}/drift", "/api/alerts/{alert_id}/ack", "/artifacts/{digest}"):
        assert path in spec["paths"], path
    assert "operator" in spec["paths"]["/api/devices/{device_id}/decommission"]["post"]["description"]
    assert any(p["name"] == "limit" for p in spec["paths"]["/api/devices"]["get"]["parameters"])


@pytest.mark.parametrize("role,code", [("viewer", 200), ("operator", 200)])
def test_metrics_endpoint(fleet, role, code) -> None:  # type: ignore[no-untyped-def]
    fleet.client.get("/api/devices", headers=fleet.h(role))
    text = fleet.client.get("/metrics").get_data(as_text=True)
    assert fleet.client.get("/metrics").status_code == code
    assert 'edgefleet_http_request_seconds_count{method="GET",rule="/api/devices",status="200"}' in text


def test_secrets_never_logged(fleet, caplog) -> None:  # type: ignore[no-untyped-def]
    import json
    import logging

    from fleet.logs import JsonFormatter

    caplog.set_level(logging.DEBUG)
    tok = fleet.client.post("/api/enrolment-tokens", headers=fleet.h("operator"), json={}).json["token"]
    dev = SimDevice("quiet")
    body = fleet.client.post("/api/enrol", json={"token": tok, "public_key": dev.public_key_b64,
                                                 "device_id": "quiet"}).json
    api = fleet.client.post("/api/tokens", headers=fleet.h(), json={"name": "n", "role": "viewer"}).json["token"]
    fleet.client.post("/console/login", data={"token": api})
    text = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert any(r.name == "fleet.audit" for r in caplog.records)  # something was logged
    for secret in (tok, body["mqtt"]["password"], api, "admin-token", "operator-token"):
        assert secret not in text
    line = json.loads(JsonFormatter().format(next(r for r in caplog.records if r.name == "fleet.audit")))
    assert line["action"] and line["actor"] and line["level"] == "INFO"
