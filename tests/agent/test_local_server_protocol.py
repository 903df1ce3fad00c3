"""The local server's wire protocols in detail: HTTP/1.1 keep-alive, pipelining, chunked bodies,
100-continue, limits and malformed requests, Unix-socket framing, large tensors, shutdown, and
the EFT1 codec's caches. Most tests run a LocalServer on a stub model (no runtime needed)."""

from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest

from agent import wire
from agent.local_server import LocalClient, LocalRequestError, LocalServer
from agent.serving import NoModelError
from agent.spec_check import InputError

LIMIT = 4 * 2**20
BIN = wire.CONTENT_TYPE.encode()


def stub_predict(inputs: Any) -> dict[str, np.ndarray]:
    """y = 2x, plus the batch size; errors on demand through the value of x[0, 0]."""
    if not isinstance(inputs, dict):
        inputs = {"x": inputs}
    if set(inputs) != {"x"}:
        raise InputError(f"unknown input(s) {sorted(set(inputs) - {'x'})}; the model expects x")
    x = np.asarray(inputs["x"], np.float32)
    if x.ndim != 2:
        raise InputError(f"input 'x' has {x.ndim} dimensions, expected 2")
    if x.size and x[0, 0] == -1:
        raise NoModelError("no model is installed")
    if x.size and x[0, 0] == -2:
        raise RuntimeError("boom")
    return {"y": x * 2, "n": np.array(x.shape[0], np.int64)}


def stub_status() -> dict[str, Any]:
    return {"active": {"version": 7}, "input_names": ["x"]}


@pytest.fixture
def srv(tmp_path):
    s = LocalServer(stub_predict, stub_status, unix_socket=str(tmp_path / "s.sock"), http_port=0, max_bytes=LIMIT)
    s.start()
    yield s
    s.stop()


def connect(srv: LocalServer) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.http_port), timeout=10)
    return s


class Responses:
    """Reads HTTP responses one after another off a raw socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.f = sock.makefile("rb")

    def next(self) -> tuple[int, dict[str, str], bytes] | None:
        status = self.f.readline()
        if not status:
            return None
        assert status.startswith(b"HTTP/1.1 "), status
        code = int(status.split()[1])
        headers = {}
        while (line := self.f.readline()) not in (b"\r\n", b""):
            k, v = line.decode().split(":", 1)
            headers[k.strip().lower()] = v.strip()
        body = self.f.read(int(headers.get("content-length", 0)))
        return code, headers, body

    def eof(self) -> bool:
        return self.f.read(1) == b""


def post(path: str, body: bytes, ctype: bytes = b"application/json", extra: bytes = b"",
         version: bytes = b"HTTP/1.1") -> bytes:
    return (b"POST %s %s\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
            % (path.encode(), version, ctype, len(body), extra)) + body


def json_body(x: np.ndarray) -> bytes:
    return json.dumps({"inputs": {"x": x.tolist()}}).encode()


def x_of(batch: int, cols: int = 3, start: float = 0.0) -> np.ndarray:
    return (np.arange(batch * cols, dtype=np.float32).reshape(batch, cols) + start)


# -- HTTP -----------------------------------------------------------------------------------------

def test_http_keep_alive_serves_every_request_on_one_connection(srv) -> None:
    c = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=10)
    c.connect()
    first = c.sock
    for i in range(12):
        x = x_of(1 + i % 3, start=i)
        if i % 3 == 0:
            c.request("POST", "/v1/predict", wire.encode({"x": x}), {"Content-Type": wire.CONTENT_TYPE})
            r = c.getresponse()
            out, header = wire.decode(r.read())
            assert r.status == 200 and header["ok"] and r.getheader("Content-Type") == wire.CONTENT_TYPE
            np.testing.assert_array_equal(out["y"], 2 * x)
        elif i % 3 == 1:
            c.request("POST", "/v1/predict", json_body(x), {"Content-Type": "application/json"})
            r = c.getresponse()
            assert r.status == 200
            assert np.asarray(json.loads(r.read())["outputs"]["y"]).tolist() == (2 * x).tolist()
        else:
            c.request("GET", "/healthz")
            r = c.getresponse()
            assert r.status == 200 and json.loads(r.read()) == {"ok": True}
        assert r.getheader("Connection") is None  # HTTP/1.1: persistent unless it says close
    assert c.sock is first  # http.client re-connects silently if the server closed: it never did
    c.close()


def test_http_pipelined_requests_are_answered_in_order(srv) -> None:
    s = connect(srv)
    s.sendall(post("/v1/predict", wire.encode({"x": x_of(1)}), BIN)
              + post("/v1/predict", json_body(x_of(2)))
              + b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n"
              + post("/v1/predict", wire.encode({"x": x_of(3)}), BIN))
    rs = Responses(s)
    code, _, body = rs.next()
    assert code == 200 and wire.decode(body)[0]["y"].shape == (1, 3)
    code, _, body = rs.next()
    assert code == 200 and np.asarray(json.loads(body)["outputs"]["y"]).shape == (2, 3)
    code, _, body = rs.next()
    assert code == 200 and json.loads(body) == stub_status()
    code, _, body = rs.next()
    assert code == 200 and int(wire.decode(body)[0]["n"]) == 3
    s.close()


def test_http_request_split_across_many_writes(srv) -> None:
    s = connect(srv)
    req = post("/v1/predict", json_body(x_of(2)))
    for i in range(0, len(req), 7):
        s.sendall(req[i:i + 7])
        time.sleep(0.001)
    code, _, body = Responses(s).next()
    assert code == 200 and np.asarray(json.loads(body)["outputs"]["y"]).tolist() == (2 * x_of(2)).tolist()
    s.close()


def test_http_oversize_body_gets_413_then_close(srv) -> None:
    s = connect(srv)
    s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % (LIMIT + 1) + b"[" * 100_000)
    rs = Responses(s)
    code, headers, body = rs.next()
    err = json.loads(body)["error"]
    assert code == 413 and err["kind"] == "invalid_input" and "exceeds the limit" in err["message"]
    assert headers["connection"] == "close" and rs.eof()
    s.close()
    # a client that sends the whole oversize body first still reads the 413 (no reset)
    req = urllib.request.Request(f"http://127.0.0.1:{srv.http_port}/v1/predict", data=b"0" * (LIMIT + 10),
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(req, timeout=10)
    assert ei.value.code == 413


def test_http_body_at_the_limit_is_accepted(srv) -> None:
    body = json_body(x_of(1))
    body = body + b" " * (LIMIT - len(body))  # JSON allows trailing whitespace
    s = connect(srv)
    s.sendall(post("/v1/predict", body))
    code, _, out = Responses(s).next()
    assert code == 200 and json.loads(out)["outputs"]["y"] == (2 * x_of(1)).tolist()
    s.close()


@pytest.mark.parametrize("request_line, code", [
    (b"GARBAGE", 400),
    (b"GET /healthz", 400),
    (b"GET  /healthz HTTP/1.1", 400),
    (b"GET /healthz HTTP/1.1 extra", 400),
    (b"GET /healthz FOO/1.1", 400),
    (b"GET /healthz HTTP/2.0", 505),
])
def test_http_malformed_request_line_gets_4xx_then_close(srv, request_line, code) -> None:
    s = connect(srv)
    s.sendall(request_line + b"\r\nHost: x\r\n\r\n" + b"GET /healthz HTTP/1.1\r\n\r\n")
    rs = Responses(s)
    got, headers, body = rs.next()
    assert got == code and json.loads(body)["error"]["message"] and headers["connection"] == "close"
    assert rs.eof()  # the request queued behind it is not served on a connection out of sync
    s.close()


@pytest.mark.parametrize("headers, code", [
    (b"Content-Length: abc\r\n", 400),
    (b"Content-Length: -5\r\n", 400),
    (b"Content-Length: 5\r\nContent-Length: 6\r\n", 400),
    (b"no colon here\r\n", 400),
    (b" X-Folded: continuation\r\n", 400),
    (b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", 400),
    (b"Transfer-Encoding: gzip\r\n", 501),
    (b"X-Big: " + b"a" * 70_000 + b"\r\n", 431),
    (b"".join(b"X-%d: 1\r\n" % i for i in range(150)), 431),
])
def test_http_bad_headers_get_4xx_then_close(srv, headers, code) -> None:
    s = connect(srv)
    s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    rs = Responses(s)
    got, hdrs, body = rs.next()
    assert got == code and json.loads(body)["error"]["message"] and hdrs["connection"] == "close"
    assert rs.eof()
    s.close()


def test_http_chunked_body(srv) -> None:
    body = wire.encode({"x": x_of(2)})
    chunks = [body[:5], body[5:40], body[40:]]
    raw = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\nX-Trailer: t\r\n\r\n"
    s = connect(srv)
    s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
              % BIN + raw + b"GET /healthz HTTP/1.1\r\n\r\n")
    rs = Responses(s)
    code, _, out = rs.next()
    np.testing.assert_array_equal(wire.decode(out)[0]["y"], 2 * x_of(2))
    assert code == 200 and rs.next()[0] == 200  # the connection is still in sync
    s.close()


def test_http_chunked_body_over_the_limit_gets_413(srv) -> None:
    s = connect(srv)
    s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % (LIMIT + 1))
    rs = Responses(s)
    code, _, body = rs.next()
    assert code == 413 and json.loads(body)["error"]["kind"] == "invalid_input"
    assert rs.eof()
    s.close()


def test_http_expect_100_continue(srv) -> None:
    body = json_body(x_of(1))
    s = connect(srv)
    s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(body))
    rs = Responses(s)
    code, _, interim = rs.next()  # before the body is sent
    assert code == 100 and interim == b""
    s.sendall(body)
    code, _, out = rs.next()
    assert code == 200 and json.loads(out)["outputs"]["y"] == (2 * x_of(1)).tolist()
    s.close()


def test_http_1_0_closes_unless_keep_alive(srv) -> None:
    s = connect(srv)
    s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
    rs = Responses(s)
    code, headers, _ = rs.next()
    assert code == 200 and headers["connection"] == "close" and rs.eof()
    s.close()
    s = connect(srv)
    rs = Responses(s)
    for _ in range(2):
        s.sendall(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        code, headers, _ = rs.next()
        assert code == 200 and headers["connection"] == "keep-alive"
    s.sendall(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
    code, headers, _ = rs.next()
    assert code == 200 and headers["connection"] == "close" and rs.eof()
    s.close()


def test_http_unknown_path_and_wrong_method_keep_the_connection(srv) -> None:
    s = connect(srv)
    s.sendall(post("/v1/nope", b'{"inputs": [[1, 2]]}') + b"GET /v1/predict HTTP/1.1\r\n\r\n"
              + b"DELETE /healthz HTTP/1.1\r\n\r\n" + post("/v1/predict", json_body(x_of(1))))
    rs = Responses(s)
    code, _, body = rs.next()
    assert code == 404 and json.loads(body)["error"]["kind"] == "not_found"
    code, _, body = rs.next()
    assert code == 405 and "POST" in json.loads(body)["error"]["message"]
    code, _, body = rs.next()
    assert code == 405 and "GET" in json.loads(body)["error"]["message"]
    code, _, body = rs.next()  # the 404'd request's body was consumed: still in sync
    assert code == 200 and json.loads(body)["outputs"]["y"] == (2 * x_of(1)).tolist()
    s.close()


def test_http_errors_answer_that_request_only(srv) -> None:
    bad_shape = {"inputs": {"x": [1.0, 2.0]}}
    cases = [
        (post("/v1/predict", b"{not json"), 400, "invalid_input", "not JSON"),
        (post("/v1/predict", json.dumps(bad_shape).encode()), 400, "invalid_input", "dimensions"),
        (post("/v1/predict", json.dumps({"inputs": 5}).encode()), 400, "invalid_input", "must be"),
        (post("/v1/predict", json_body(np.full((1, 3), -1, np.float32))), 503, "no_model", "no model"),
        (post("/v1/predict", json_body(np.full((1, 3), -2, np.float32))), 500, "internal", "boom"),
        (post("/v1/predict", b"EFT1garbage", BIN), 400, "invalid_input", ""),
        (post("/v1/predict", wire.encode({"z": x_of(1)}), BIN), 400, "invalid_input", "unknown input"),
    ]
    s = connect(srv)
    rs = Responses(s)
    for req, code, kind, words in cases:
        s.sendall(req)
        got, headers, body = rs.next()
        if headers["content-type"] == wire.CONTENT_TYPE:
            err = wire.decode(body)[1]["error"]
        else:
            err = json.loads(body)["error"]
        assert (got, err["kind"]) == (code, kind) and words in err["message"]
    s.sendall(post("/v1/predict", json_body(x_of(1))))
    assert rs.next()[0] == 200  # none of them broke the connection
    s.close()


def test_http_empty_post_is_a_400(srv) -> None:
    s = connect(srv)
    s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n\r\n")
    code, _, body = Responses(s).next()
    assert code == 400 and json.loads(body)["error"]["kind"] == "invalid_input"
    s.close()


# -- Unix socket ----------------------------------------------------------------------------------

def frame(msg: bytes) -> bytes:
    return struct.pack("<I", len(msg)) + msg


def read_frame(f: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    head = f.read(4)
    if len(head) < 4:
        return None
    return wire.decode(f.read(struct.unpack("<I", head)[0]))


def test_unix_pipelined_frames_are_answered_in_order(srv) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.connect(srv.unix_socket)
    s.sendall(frame(wire.encode({"x": x_of(1)})) + frame(wire.encode({}, op="status"))
              + frame(wire.encode({"x": x_of(2)})) + frame(b"EFT1junk") + frame(wire.encode({"x": x_of(3)})))
    f = s.makefile("rb")
    assert int(read_frame(f)[0]["n"]) == 1
    assert read_frame(f)[1]["status"] == stub_status()
    assert int(read_frame(f)[0]["n"]) == 2
    assert read_frame(f)[1]["error"]["kind"] == "invalid_input"
    assert int(read_frame(f)[0]["n"]) == 3
    s.close()


def test_unix_oversize_frame_is_refused_then_closed(srv) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.connect(srv.unix_socket)
    s.sendall(struct.pack("<I", LIMIT + 1) + b"EFT1" + b"\0" * 10_000)
    f = s.makefile("rb")
    _, header = read_frame(f)
    assert not header["ok"] and header["error"]["kind"] == "invalid_input"
    assert "exceeds the limit" in header["error"]["message"]
    assert f.read(1) == b""
    s.close()


def test_unix_errors_keep_the_connection(srv) -> None:
    c = LocalClient(srv.unix_socket)
    with pytest.raises(LocalRequestError) as ei:
        c.predict({"x": np.zeros(3, np.float32)})
    assert ei.value.kind == "invalid_input" and "dimensions" in str(ei.value)
    with pytest.raises(LocalRequestError) as ei:
        c.predict({"x": np.full((1, 3), -1, np.float32)})
    assert ei.value.kind == "no_model"
    np.testing.assert_array_equal(c.predict({"x": x_of(2)})["y"], 2 * x_of(2))
    c.close()


# -- both -----------------------------------------------------------------------------------------

def test_large_tensors_round_trip_on_both_transports(srv) -> None:
    x = np.random.default_rng(0).random((3000, 300), dtype=np.float32)  # 3.6 MB in, 3.6 MB out
    c = LocalClient(srv.unix_socket)
    for _ in range(2):
        np.testing.assert_array_equal(c.predict({"x": x})["y"], 2 * x)
    c.close()
    h = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=30)
    for _ in range(2):
        h.request("POST", "/v1/predict", wire.encode({"x": x}), {"Content-Type": wire.CONTENT_TYPE})
        r = h.getresponse()
        assert r.status == 200
        np.testing.assert_array_equal(wire.decode(r.read())[0]["y"], 2 * x)
    h.close()


def test_many_connections_at_once(srv) -> None:
    errors: list[BaseException] = []

    def app(i: int) -> None:
        try:
            if i % 2:
                c = LocalClient(srv.unix_socket)
                for j in range(20):
                    assert int(c.predict({"x": x_of(1 + j % 4)})["n"]) == 1 + j % 4
                c.close()
            else:
                h = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=10)
                for j in range(20):
                    h.request("POST", "/v1/predict", wire.encode({"x": x_of(1 + j % 4)}),
                              {"Content-Type": wire.CONTENT_TYPE})
                    assert int(wire.decode(h.getresponse().read())[0]["n"]) == 1 + j % 4
                h.close()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=app, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []


def test_stop_ends_persistent_connections(tmp_path) -> None:
    s = LocalServer(stub_predict, stub_status, unix_socket=str(tmp_path / "s.sock"), http_port=0)
    s.start()
    c = LocalClient(s.unix_socket, timeout=5)
    assert int(c.predict({"x": x_of(1)})["n"]) == 1
    h = connect(s)
    h.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
    rs = Responses(h)
    assert rs.next()[0] == 200
    s.stop()
    assert rs.eof()  # the idle keep-alive connection sees end-of-stream
    with pytest.raises(ConnectionError):
        c.predict({"x": x_of(1)})
    assert not (tmp_path / "s.sock").exists()
    c.close()
    h.close()


def test_local_client_times_out(tmp_path) -> None:
    path = str(tmp_path / "mute.sock")
    mute = socket.socket(socket.AF_UNIX)
    mute.bind(path)
    mute.listen(1)
    c = LocalClient(path, timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        c.call({"x": x_of(1)})
    assert time.monotonic() - t0 < 5
    c.close()
    mute.close()


# -- EFT1 codec -----------------------------------------------------------------------------------

def test_wire_header_cache_keeps_values_and_types_apart() -> None:
    _, h_true = wire.decode(wire.encode({}, ok=True))
    _, h_one = wire.decode(wire.encode({}, ok=1))
    assert h_true["ok"] is True and h_one["ok"] == 1 and h_one["ok"] is not True
    _, h = wire.decode(wire.encode({"x": x_of(1)}, op="status"))
    h["op"] = "changed by the caller"
    h["extra"] = 1
    assert wire.decode(wire.encode({"x": x_of(1)}, op="status"))[1] == {"op": "status"}
    _, h = wire.decode(wire.encode({}, ok=False, error={"kind": "k", "message": "m"}))
    h["error"]["kind"] = "changed"
    assert wire.decode(wire.encode({}, ok=False, error={"kind": "k", "message": "m"}))[1]["error"]["kind"] == "k"


def test_wire_checks_sizes_on_a_cached_header() -> None:
    msg = wire.encode({"a": x_of(2)})
    wire.decode(msg)  # now cached
    with pytest.raises(wire.WireError, match="truncated"):
        wire.decode(msg[:-1])
    with pytest.raises(wire.WireError, match="trailing"):
        wire.decode(msg + b"\0")


def test_wire_odd_arrays_round_trip() -> None:
    arrays = {"t": np.arange(6, dtype=">i4").reshape(2, 3).T, "s": np.float32(3.5), "e": np.zeros((0, 4), np.int8),
              "b": np.array([True, False]), "h": np.arange(4, dtype=np.float16)}
    out, _ = wire.decode(bytearray(wire.encode(arrays)))
    for k, v in arrays.items():
        v = np.asarray(v)
        assert out[k].dtype == v.dtype.newbyteorder("<") and out[k].shape == v.shape
        np.testing.assert_array_equal(out[k], v)
        assert not out[k].flags.writeable  # views of the message, even of a bytearray
    with pytest.raises(TypeError, match="cannot carry"):
        wire.encode({"o": np.array(["a", None], dtype=object)})


def test_wire_encode_parts_do_not_copy_large_arrays() -> None:
    big = np.random.default_rng(1).random((512, 256)).astype(np.float32)  # 512 KiB
    small = np.arange(4, dtype=np.int64)
    parts = wire.encode_parts({"big": big, "small": small}, ok=True)
    assert b"".join(parts) == wire.encode({"big": big, "small": small}, ok=True)
    assert np.shares_memory(np.frombuffer(parts[1], np.float32), big)
    out, header = wire.decode(b"".join(parts))
    assert header == {"ok": True}
    np.testing.assert_array_equal(out["big"], big)
    np.testing.assert_array_equal(out["small"], small)
