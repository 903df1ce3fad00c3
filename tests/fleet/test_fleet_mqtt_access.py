"""The broker's HTTP auth hook: devices log in with their enrolment credentials and touch only their
own topics; services log in with an operator token; decommissioned devices and wrong passwords are
refused. Both form (mosquitto-go-auth) and JSON (EMQX) bodies."""

from __future__ import annotations

from tests.fleet.test_fleet_api import _enrol


def test_device_credentials_and_topics(fleet) -> None:  # type: ignore[no-untyped-def]
    c = fleet.client
    res = _enrol(fleet, "cam-1")
    user, pw = res["mqtt"]["username"], res["mqtt"]["password"]
    base = f"edgefleet/v1/{fleet.ctx.settings.fleet_id}/cam-1"
    assert c.post("/api/mqtt/auth", data={"username": user, "password": pw, "clientid": user}).status_code == 200
    assert c.post("/api/mqtt/auth", json={"username": user, "password": pw + "x"}).status_code == 403
    assert c.post("/api/mqtt/auth", data={"username": user, "password": ""}).status_code == 403

    def acl(topic: str, acc: int, username: str = user) -> int:
        return c.post("/api/mqtt/acl", data={"username": username, "topic": topic, "acc": acc}).status_code

    assert acl(f"{base}/telemetry", 2) == 200 and acl(f"{base}/state", 2) == 200
    assert acl(f"{base}/cmd", 4) == 200 and acl(f"{base}/cmd", 1) == 200
    assert acl(f"{base}/cmd", 2) == 403                     # a device cannot forge its own commands
    assert acl(f"{base}/telemetry", 4) == 403               # nor read its telemetry back
    other = f"edgefleet/v1/{fleet.ctx.settings.fleet_id}/cam-2"
    assert acl(f"{other}/telemetry", 2) == 403 and acl(f"{other}/cmd", 4) == 403
    assert acl("edgefleet/v1/+/+/telemetry", 4) == 403
    # its fleet's ingest status (mqtt.hold_until_ingest): read and subscribe, never publish
    status = f"edgefleet/ingest/{fleet.ctx.settings.fleet_id}"
    assert acl(f"{status}/+/status", 4) == 200 and acl(f"{status}/edgefleet-ingest-a/status", 1) == 200
    assert acl(f"{status}/edgefleet-ingest-a/status", 2) == 403
    assert acl("edgefleet/ingest/other-fleet/+/status", 4) == 403 and acl(f"{status}/#", 4) == 403
    assert acl("edgefleet/ingest/+/+/status", 4) == 403
    assert c.post("/api/mqtt/acl", json={"username": user, "topic": f"{base}/events",
                                         "action": "publish"}).status_code == 200
    # decommissioned: neither login nor topics
    assert c.post("/api/devices/cam-1/decommission", headers=fleet.h("operator")).status_code == 200
    assert c.post("/api/mqtt/auth", data={"username": user, "password": pw}).status_code == 403
    assert acl(f"{base}/telemetry", 2) == 403


def test_service_accounts_use_operator_tokens(fleet) -> None:  # type: ignore[no-untyped-def]
    c = fleet.client
    assert c.post("/api/mqtt/auth", data={"username": "ingest-1", "password": "operator-token"}).status_code == 200
    assert c.post("/api/mqtt/auth", data={"username": "ingest-1", "password": "viewer-token"}).status_code == 403
    assert c.post("/api/mqtt/auth", data={"username": "ingest-1", "password": "nope"}).status_code == 403
    assert c.post("/api/mqtt/acl", data={"username": "ingest-1", "topic": "$share/g/edgefleet/v1/x/+/telemetry",
                                         "acc": 4}).status_code == 200
    assert c.post("/api/mqtt/acl", data={"username": "ingest-1", "topic": "edgefleet/ingest/x/ingest-1/status",
                                         "acc": 2}).status_code == 200   # ingest announces itself
