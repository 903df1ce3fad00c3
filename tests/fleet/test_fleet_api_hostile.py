"""Hostile requests against every operation of the fleet API (issue 12 "What was seen" 5): integers
beyond int64, 1e999, NaN, deep JSON, wrong types, NUL and unpaired surrogates, huge strings,
missing fields, with and without a token. Zero responses >= 500 and no logged tracebacks; the
oversize-body cases run against a real HTTP server and must be answered before the body is read."""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import threading
from typing import Any

import pytest

from fleet.api.validation import MAX_DEPTH
from fleet.devsim import SimDevice, make_bundle

BIG = str(2**70)
# Raw JSON texts, so values Python's json.dumps cannot write (1e999, NaN, lone surrogates) are sent too.
VALUES = [BIG, "-" + BIG, str(2**31), "9223372036854775808", "1e999", "-1e999", "NaN", "Infinity", "1.5", "-1", "0",
          "true", "null", '"eu"', '"\\u0000"', '"\\ud800"', '"' + "é" * 3000 + '"', '"' + "x" * 100_000 + '"',
          "[]", "{}", '{"a": {"b": [1e999]}}', '["eu", 2e400]', "[" * 50 + "]" * 50]
WHOLE_BODIES = ["", "not json", "[]", '"x"', "null", "1e999", "NaN", "{" * 10, '{"a":' * 100_000 + "1" +
                "}" * 100_000, "[" * 200_000 + "]" * 200_000, '{"\\ud800": 1}', '{"k": "\\u0000"}',
                '{"attributes": "eu", "tags": "x", "ttl_s": 1e999, "version": ' + BIG + "}"]
QUERY_VALUES = [BIG, str(2**31), str(2**63), "1e999", "nan", "-inf", "-1", "1.5", "x" * 5000, "é", "", "true", "%00", "%ED%A0%80", "%FF"]


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _paths(path: str, params: list[dict[str, Any]], ids: dict[str, str]) -> list[str]:
    names = [p["name"] for p in params if p["in"] == "path"]
    if not names:
        return [path]
    out = []
    for variant in ("good", BIG, str(2**63 - 1), str(2**31), str(2**31 - 1), "-1", "..", "%2e%2e%2f", "é" * 40, "x" * 3000, "%00", "1e999"):
        p = path
        for n in names:
            p = p.replace("{" + n + "}", ids.get(n, "1") if variant == "good" else variant)
        out.append(p)
    return out


def hostile_requests(spec: dict[str, Any], ids: dict[str, str]) -> list[tuple[str, str, str | None, str]]:
    """(method, url, raw body or None, content type) for every operation of the document."""
    reqs: list[tuple[str, str, str | None, str]] = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            params = op.get("parameters", [])
            urls = _paths(path, params, ids)
            base = urls[0] if len(urls) == 1 else path.replace("{", "").replace("}", "")
            for url in urls:
                reqs.append((method, url, None, "application/json"))
            for q in (p for p in params if p["in"] == "query"):
                reqs += [(method, f"{urls[0]}?{q['name']}={v}", None, "") for v in QUERY_VALUES]
            content = op.get("requestBody", {}).get("content", {})
            if "application/json" not in content:
                if content:  # uploads: garbage in any content type
                    reqs += [(method, urls[0], b, ct) for b in ("", "garbage", "{}")
                             for ct in ("application/octet-stream", "application/x-www-form-urlencoded", "")]
                continue
            schema = _resolve(spec, content["application/json"]["schema"])
            reqs += [(method, urls[0], b, "application/json") for b in WHOLE_BODIES]
            for prop in schema.get("properties", {}):
                reqs += [(method, urls[0], '{"' + prop + '": ' + v + "}", "application/json") for v in VALUES]
            del base
    return reqs


def _send(client: Any, method: str, url: str, body: str | None, ctype: str, headers: dict[str, str]) -> Any:
    kw: dict[str, Any] = {"headers": headers}
    if body is not None:
        kw["data"] = body.encode("utf-8", "surrogatepass")
        if ctype:
            kw["content_type"] = ctype
    return client.open(url, method=method.upper(), **kw)


@pytest.mark.slow
def test_hostile_requests_never_5xx(fleet, baseline, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    c = fleet.client
    tok = c.post("/api/enrolment-tokens", headers=fleet.h("operator"), json={}).json["token"]
    dev = SimDevice("dev-1")
    assert c.post("/api/enrol", json={"token": tok, "public_key": dev.public_key_b64, "device_id": "dev-1"}
                  ).status_code == 201
    b = make_bundle(tmp_path / "m.tar", fleet.build_key, version=1, baseline=baseline)
    up = c.post("/api/models", headers=fleet.h("operator"), data=(tmp_path / "m.tar").read_bytes())
    assert up.status_code == 201, up.json
    ids = {"device_id": "dev-1", "name": "digits", "version": "1", "digest": b.bundle_sha256,
           "token_id": "1", "alert_id": "1", "request_id": "1", "rollout_id": "1"}
    spec = c.get("/api/openapi.json").json
    reqs = hostile_requests(spec, ids)
    assert len(reqs) > 1500
    caplog.set_level(logging.ERROR)
    failures, by_status = [], {}
    for i, (method, url, body, ctype) in enumerate(reqs):
        headers = {} if i % 7 == 0 else fleet.h("admin")   # every 7th without a token
        r = _send(c, method, url, body, ctype, headers)
        by_status[r.status_code] = by_status.get(r.status_code, 0) + 1
        if r.status_code >= 500:
            failures.append((r.status_code, method, url[:120], (body or "")[:120], r.get_data(as_text=True)[:200]))
        elif r.status_code >= 400 and not url.startswith("/api/mqtt"):  # the broker hook answers verdicts
            assert r.is_json and {"code", "message"} <= set(r.json.get("error", {})), \
                (r.status_code, method, url[:80], r.get_data()[:200])
    assert not failures, failures[:10]
    assert by_status.get(400, 0) > 300, by_status
    tracebacks = [rec for rec in caplog.records if rec.exc_info or "Traceback" in rec.getMessage()]
    assert not tracebacks, [rec.getMessage() for rec in tracebacks[:5]]


@pytest.mark.parametrize("body", [
    '{"token": "t", "public_key": "k", "device_id": "a", "attributes": "eu"}',
    '{"token": "t", "public_key": "k", "tags": [' + BIG + "]}",
    '{"token": 5, "public_key": "k"}',
])
def test_wrong_types_name_the_field(fleet, body) -> None:  # type: ignore[no-untyped-def]
    r = fleet.client.post("/api/enrol", data=body, content_type="application/json")
    assert r.status_code == 400, r.json
    err = r.json["error"]
    assert err["code"] == "invalid-request" and err["message"].startswith("body.") and err["details"]


def test_int64_and_float_bounds(fleet) -> None:  # type: ignore[no-untyped-def]
    """'Python int too large to convert to SQLite INTEGER' was a 500; now 400 in query, body and path."""
    c, h = fleet.client, fleet.h("admin")
    assert c.get(f"/api/devices?version={BIG}", headers=h).status_code == 400
    assert c.get(f"/api/aggregates?version={2**63}", headers=h).status_code == 400
    # versions and ids are INTEGER columns, 32-bit on PostgreSQL ("integer out of range" was a 500)
    assert c.get(f"/api/aggregates?version={2**31}", headers=h).status_code == 400
    assert c.get(f"/api/aggregates?version={2**31 - 1}", headers=h).status_code == 200
    assert c.get("/api/aggregates?since=1e999", headers=h).status_code == 400
    r = c.get(f"/api/rollouts/{BIG}", headers=h)
    assert r.status_code == 400 and "beyond 2147483647" in r.json["error"]["message"]
    assert c.get(f"/api/alerts/{2**31}", headers=h).status_code == 400
    assert c.get(f"/api/alerts/{2**31 - 1}", headers=h).status_code == 404
    r = c.post("/api/rollouts/rollback-version", headers=h, data='{"model_name": "m", "version": ' + BIG + "}",
               content_type="application/json")
    assert r.status_code == 400 and "version" in r.json["error"]["message"]
    r = c.post("/api/enrolment-tokens", headers=h, data='{"ttl_s": 1e999}', content_type="application/json")
    assert r.status_code == 400
    r = c.post("/api/enrolment-tokens", headers=h, data='{"ttl_s": NaN}', content_type="application/json")
    assert r.status_code == 400
    deep = '{"tags": ' + "[" * 100_000 + "]" * 100_000 + "}"
    r = c.patch("/api/devices/x", headers=h, data=deep, content_type="application/json")
    assert r.status_code == 400 and "nested" in r.json["error"]["message"]
    ok = '{"attributes": ' + '{"a": ' * (MAX_DEPTH - 2) + "1" + "}" * (MAX_DEPTH - 2) + "}"
    assert c.patch("/api/devices/x", headers=h, data=ok, content_type="application/json").status_code == 400


def test_json_body_cap_is_413(fleet) -> None:  # type: ignore[no-untyped-def]
    r = fleet.client.post("/api/enrol", data=b"{" + b" " * (3 * 1024 * 1024) + b"}", content_type="application/json")
    assert r.status_code == 413 and r.json["error"]["code"] == "request-entity-too-large"


# --- real HTTP server: oversize bodies are refused before they are read -----------------------

@pytest.fixture
def live(fleet):  # type: ignore[no-untyped-def]
    from werkzeug.serving import make_server

    srv = make_server("127.0.0.1", 0, fleet.app, threaded=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_port
    srv.shutdown()


def _early_answer(port: int, path: str, length: int, headers: str = "", send: int = 1 << 20) -> tuple[int, dict]:
    """Claim `length` bytes, send only `send`, and read the answer: it must come without the rest."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n{headers}\r\n".encode())
        try:
            s.sendall(b"\0" * send)
        except OSError:
            pass  # the server may already have answered and closed
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < 10:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, json.loads(body[: body.rindex(b"}") + 1]) if b"}" in body else {}


def test_huge_bodies_are_refused_unread(fleet, live) -> None:  # type: ignore[no-untyped-def]
    big = 768 * 1024 * 1024
    status, body = _early_answer(live, "/api/enrol", big, "Content-Type: application/json\r\n")
    assert status == 413 and body["error"]["code"] == "request-entity-too-large"
    status, body = _early_answer(live, "/api/models", big, "Content-Type: application/octet-stream\r\n")
    assert status == 401
    fleet.settings.max_upload_bytes = 4 * 1024 * 1024
    status, body = _early_answer(live, "/api/models", big, "Authorization: Bearer operator-token\r\n")
    assert status == 413 and "max_upload_bytes" in body["error"]["message"]


# --- uploads -------------------------------------------------------------------------------------

def test_upload_takes_any_content_type_and_caps_size(fleet, baseline, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`curl --data-binary @x.bundle` sends x-www-form-urlencoded; that was "empty upload" (issue 11)."""
    c, op = fleet.client, fleet.h("operator")
    make_bundle(tmp_path / "m.tar", fleet.build_key, version=3, baseline=baseline)
    data = (tmp_path / "m.tar").read_bytes()
    r = c.post("/api/models", headers=op, data=data, content_type="application/x-www-form-urlencoded")
    assert r.status_code == 201, r.json
    assert r.json["version"] == 3 and r.json["size"] == len(data)
    for kw in ({}, {"content_type": "application/octet-stream"}, {"content_type": "application/x-tar"}):
        assert c.post("/api/models", headers=op, data=data, **kw).status_code == 200  # same bytes again
    multi = c.post("/api/models", headers=op, data={"bundle": (io.BytesIO(data), "m.bundle")},
                   content_type="multipart/form-data")
    assert multi.status_code == 200, multi.json
    wrong = c.post("/api/models", headers=op, data={"file": (io.BytesIO(data), "m.bundle")},
                   content_type="multipart/form-data")
    assert wrong.status_code == 400 and "'bundle'" in wrong.json["error"]["message"]
    make_bundle(tmp_path / "big.tar", fleet.build_key, version=4, baseline=baseline, payload_bytes=b"\x01" * (5 << 20))
    big = (tmp_path / "big.tar").read_bytes()  # over the 2 MiB JSON cap: uploads have their own
    r = c.post("/api/models", headers=op, data={"bundle": (io.BytesIO(big), "big.bundle")},
               content_type="multipart/form-data")
    assert r.status_code == 201 and r.json["size"] == len(big), r.json
    empty = c.post("/api/models", headers=op, data=b"")
    assert empty.status_code == 400 and "--data-binary" in empty.json["error"]["message"]
    fleet.settings.max_upload_bytes = len(data) - 1
    r = c.post("/api/models", headers=op, data=data, content_type="application/octet-stream")
    assert r.status_code == 413 and r.json["error"]["code"] == "too-large"
    chunked = c.post("/api/models", headers={**op, "Transfer-Encoding": "chunked"}, input_stream=io.BytesIO(data),
                     environ_overrides={"wsgi.input_terminated": True})  # what a server sets for chunked
    assert chunked.status_code == 413
    assert not list(fleet.settings.artifacts_dir.glob(".upload-*")), "a refused upload left its temp file"


@pytest.mark.parametrize("name", ["../../PWNED_name", "a/b", "x" * 300, "UPPER"])
def test_upload_refuses_names_outside_the_grammar(fleet, baseline, tmp_path, monkeypatch, name) -> None:  # type: ignore[no-untyped-def]
    """A rogue build machine signs a bundle whose model name is a path: 400, nothing stored (issue 12 item 2)."""
    import agent.bundle_build as bb

    monkeypatch.setattr(bb, "validate_manifest", lambda manifest: None)  # what a rogue builder would skip
    make_bundle(tmp_path / "bad.tar", fleet.build_key, name=name, baseline=baseline)
    r = fleet.client.post("/api/models", headers=fleet.h("operator"), data=(tmp_path / "bad.tar").read_bytes())
    assert r.status_code == 400, r.json
    assert "name" in r.json["error"]["message"]
    assert fleet.client.get("/api/models", headers=fleet.h("viewer")).json["total"] == 0
    assert [p.name for p in fleet.settings.artifacts_dir.iterdir()] == []
    assert not (fleet.settings.data_dir.parent / "PWNED_name").exists()


def test_curl_data_binary_upload_works(fleet, live, baseline, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The exact command docs/deploy.md shows, against a real HTTP server."""
    import shutil
    import subprocess

    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    make_bundle(tmp_path / "m.tar", fleet.build_key, version=5, baseline=baseline)
    out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", "-H", "Authorization: Bearer operator-token",
                          "--data-binary", f"@{tmp_path / 'm.tar'}", f"http://127.0.0.1:{live}/api/models"],
                         capture_output=True, text=True, timeout=60)
    body, _, code = out.stdout.rpartition("\n")
    assert code == "201", out
    assert json.loads(body)["version"] == 5


@pytest.mark.slow
def test_console_pages_never_5xx_on_hostile_queries(fleet, caplog) -> None:  # type: ignore[no-untyped-def]
    """The console reads query strings too (`?offset=2**64` was a 500 from SQLite's OFFSET)."""
    caplog.set_level(logging.ERROR)
    rules = [r.rule for r in fleet.app.url_map.iter_rules() if r.rule.startswith("/console") and "GET" in r.methods]
    assert len(rules) >= 8
    bad = []
    for rule in rules:
        path = re.sub(r"<int:[a-z_]+>", "1", re.sub(r"<(?:path:)?[a-z_]+>", "x", rule))
        for q in ("offset", "limit", "version", "status", "reference", "cohort", "wave", "since", "q", "attr.region",
                  "next"):
            for v in (str(2**63), "1e999", "%00"):
                r = fleet.client.get(f"{path}?{q}={v}", headers=fleet.h("admin"))
                if r.status_code >= 500:
                    bad.append((r.status_code, path, q, v[:20]))
    assert not bad, bad[:10]
    assert not [rec for rec in caplog.records if rec.exc_info]


def test_production_server_refuses_oversize_bodies_unread(tmp_path, build_keys) -> None:  # type: ignore[no-untyped-def]
    """`serve --production` (waitress) refuses a Content-Length over max_upload_bytes itself, before
    reading; smaller bodies are spooled to disk by waitress, never held in memory."""
    from fleet.server import FleetServer
    from tests.fleet.conftest import make_settings

    s = make_settings(tmp_path, f"sqlite:///{tmp_path / 'fleet.db'}", build_keys[1], max_upload_bytes=4 << 20)
    srv = FleetServer(s, production=True, port=0, start_ingest=False, drift_evaluator=False).start()
    try:
        status, _ = _early_answer(srv.port, "/api/enrol", 768 * 1024 * 1024, "Content-Type: application/json\r\n")
        assert status == 413
        status, body = _early_answer(srv.port, "/api/enrol", 3 << 20, "Content-Type: application/json\r\n",
                                     send=3 << 20)
        assert status == 413 and body["error"]["code"] == "request-entity-too-large"  # the app's JSON cap
    finally:
        srv.stop()
