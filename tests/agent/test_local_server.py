"""The local server: Unix socket (binary frames) and HTTP on 127.0.0.1 (JSON and binary)."""

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from agent import wire
from agent.local_server import LocalClient, LocalRequestError


def _post(port: int, body: bytes, ctype: str) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/predict", data=body, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def served(agent_factory, bundles, tmp_path):
    sock = str(tmp_path / "agent.sock")
    from tests.agent.conftest import free_port

    a = agent_factory("srv", unix_socket=sock, http_port=free_port())
    return a, sock


def test_no_model_then_unix_socket_predict(served, bundles, digits) -> None:
    a, sock = served
    c = LocalClient(sock)
    with pytest.raises(LocalRequestError) as ei:
        c.predict({"x": digits[0][:2]})
    assert ei.value.kind == "no_model"
    a.install(bundles["v1"])
    out = c.predict({"x": digits[0][:5]})
    np.testing.assert_allclose(out["logits"], a.predict(digits[0][:5])["logits"], rtol=1e-6)
    with pytest.raises(LocalRequestError) as ei:
        c.predict({"x": np.zeros((2, 3), np.float32)})
    assert ei.value.kind == "invalid_input" and "dimension 1 is 3" in str(ei.value)
    assert c.predict({"x": digits[0][:1]})["logits"].shape == (1, 10)  # same connection still fine
    _, header = c.call({}, op="status")
    assert header["status"]["active"]["version"] == 1 and header["status"]["input_names"] == ["x"]
    c.close()


def test_http_json_and_binary(served, bundles, digits) -> None:
    a, _ = served
    a.install(bundles["v1"])
    port = a.server.http_port
    assert port and a.status()["http_port"] == port
    code, body = _post(port, json.dumps({"inputs": {"x": digits[0][:3].tolist()}}).encode(), "application/json")
    assert code == 200 and np.asarray(json.loads(body)["outputs"]["logits"]).shape == (3, 10)
    code, body = _post(port, json.dumps([[1.0] * 5]).encode(), "application/json")
    assert code == 400 and json.loads(body)["error"]["kind"] == "invalid_input"
    code, body = _post(port, b"{not json", "application/json")
    assert code == 400
    code, body = _post(port, wire.encode({"x": digits[0][:2]}), wire.CONTENT_TYPE)
    out, header = wire.decode(body)
    assert code == 200 and header["ok"] and out["logits"].shape == (2, 10)
    code, body = _post(port, b"EFT1garbage", wire.CONTENT_TYPE)
    assert code == 400 and wire.decode(body)[1]["error"]["kind"] == "invalid_input"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        assert r.status == 200


def test_keep_alive_connections_through_model_swaps(served, bundles, digits) -> None:
    """Apps holding persistent connections (Unix socket, HTTP binary, HTTP JSON) see no failed
    request while the model is swapped and rolled back under them."""
    import http.client
    import threading

    a, sock = served
    a.install(bundles["v1"])
    port = a.server.http_port
    x = digits[0][:3]
    failures: list[str] = []
    served_n = [0, 0, 0]
    stop = threading.Event()

    def unix_app() -> None:
        c = LocalClient(sock)
        while not stop.is_set():
            try:
                assert c.predict({"x": x})["logits"].shape == (3, 10)
                served_n[0] += 1
            except Exception as exc:  # noqa: BLE001 - any failure counts
                failures.append(repr(exc))
        c.close()

    def http_app(i: int, binary: bool) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.connect()
        first = c.sock
        while not stop.is_set():
            try:
                if binary:
                    c.request("POST", "/v1/predict", wire.encode({"x": x}), {"Content-Type": wire.CONTENT_TYPE})
                    r = c.getresponse()
                    shape = wire.decode(r.read())[0]["logits"].shape
                else:
                    c.request("POST", "/v1/predict", json.dumps({"inputs": {"x": x.tolist()}}),
                              {"Content-Type": "application/json"})
                    r = c.getresponse()
                    shape = np.asarray(json.loads(r.read())["outputs"]["logits"]).shape
                assert r.status == 200 and shape == (3, 10)
                served_n[i] += 1
            except Exception as exc:  # noqa: BLE001
                failures.append(repr(exc))
        if c.sock is not first:
            failures.append("http.client had to re-connect")
        c.close()

    threads = [threading.Thread(target=unix_app), threading.Thread(target=http_app, args=(1, True)),
               threading.Thread(target=http_app, args=(2, False))]
    for t in threads:
        t.start()
    for b in ("v2", "v3"):
        a.install(bundles[b])
    for _ in range(2):
        a.lifecycle.rollback_to_previous("flip")
        a.install(bundles["v3"])
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert failures == [] and all(n > 0 for n in served_n), (failures[:3], served_n)
    assert a.predictor.active.version == 3


def test_http_json_input_errors_are_400_with_a_message(served, bundles, digits) -> None:
    a, _ = served
    a.install(bundles["v1"])
    port = a.server.http_port
    ragged = [[0.0] * 64, [0.0] * 63]
    for doc, words in ((ragged, "not a rectangular array"), ({"inputs": {"x": ragged}}, "not a rectangular array"),
                       ({"inputs": {"x": [["a"] * 64]}}, "dtype"), ({"inputs": {"y": [[0.0] * 64]}}, "unknown input"),
                       ({"inputs": 3}, "must be")):
        code, body = _post(port, json.dumps(doc).encode(), "application/json")
        err = json.loads(body)["error"]
        assert code == 400 and err["kind"] == "invalid_input" and words in err["message"], (doc, code, err)
    code, body = _post(port, json.dumps({"inputs": {"x": digits[0][:2].tolist()}}).encode(), "application/json")
    assert code == 200 and np.asarray(json.loads(body)["outputs"]["logits"]).shape == (2, 10)
