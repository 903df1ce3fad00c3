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
