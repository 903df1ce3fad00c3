"""Local inference for apps on the device: a Unix socket (binary EFT1 frames, persistent
connections) and/or HTTP/1.1 on 127.0.0.1 (JSON or EFT1 bodies, keep-alive). Each connection
is served on its own thread, which reads, predicts and answers in place: no handoff between
threads on the request path. An error answers that request only and never affects the next.

Unix socket protocol: client sends u32 length + EFT1 message (header may carry "op": "predict"
(default) or "status"); server answers u32 length + EFT1 message whose header has "ok" and,
on failure, "error": {"kind", "message"}. Requests may be pipelined; answers come in order.

HTTP: POST /v1/predict with application/json {"inputs": {name: nested list}} (or a bare list
for single-input models), or with Content-Type application/x-edgefleet-tensors; GET /v1/status;
GET /healthz. Connections are persistent (HTTP/1.1 default, or HTTP/1.0 with
"Connection: keep-alive"), requests may be pipelined, bodies come with Content-Length or
chunked, "Expect: 100-continue" is honoured. A body over the limit gets 413 and a malformed
request 400 (or 431 for an oversized head), after which the connection is closed.

The request path is deliberately lean (a small HTTP parser instead of http.server, whose
per-request header parsing, logging and separate header/body writes cost far more than a
tiny model): bytes are received into one buffer per message, tensors are decoded as views of
it, answers leave in one send (scatter/gather for large tensors, so they are not copied), and
TCP_NODELAY is set so that a response is never held back by Nagle's algorithm.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent import wire
from agent.features import binary_request
from agent.serving import NoModelError, PredictError
from agent.spec_check import InputError

log = logging.getLogger(__name__)

PredictFn = Callable[[Any], dict[str, np.ndarray]]
StatusFn = Callable[[], dict[str, Any]]
Buffer = bytes | memoryview

_U32 = struct.Struct("<I")
_RECV = 1 << 16  # bytes asked of one recv(); larger messages are received in place
_JOIN_BELOW = 1 << 16  # answers smaller than this are joined and sent with sendall
_MAX_HEAD = 1 << 16  # request line and headers (http.server's line limit)
_MAX_HEADERS = 100
_LINGER_S = 1.0  # after refusing a request, read and drop what the client still sends, then close
_HAS_SENDMSG = hasattr(socket.socket, "sendmsg")


def _predict_meta(predict: PredictFn, inputs: Any, header: dict[str, Any]) -> Any:
    """Predict with the request's `metadata` (slice keys, issue 14) when the EFT1 header has one."""
    meta = header.get("metadata")
    return predict(inputs, meta) if isinstance(meta, dict) else predict(inputs)  # type: ignore[call-arg]


def _rid(outputs: Any) -> dict[str, str]:
    """The prediction's request id for the answer header (Agent.feedback takes it later)."""
    rid = getattr(outputs, "request_id", "")
    return {"request_id": rid} if rid else {}


def error_kind(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, (InputError, wire.WireError)):
        return 400, "invalid_input"
    if isinstance(exc, NoModelError):
        return 503, "no_model"
    if isinstance(exc, PredictError):
        return 500, "runtime"
    return 500, "internal"


# -- socket helpers ---------------------------------------------------------------------------

class _Reader:
    """Buffered reads over a socket that hand out views, not copies. A message that is not yet
    in the buffer is received straight into its own buffer (one allocation, no concatenation)."""

    __slots__ = ("sock", "buf", "pos")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.pos = 0

    def buffered(self) -> int:
        return len(self.buf) - self.pos

    def _more(self) -> bool:
        chunk = self.sock.recv(_RECV)
        if not chunk:
            return False
        if self.pos < len(self.buf):
            self.buf = self.buf[self.pos:] + chunk
        else:
            self.buf = chunk
        self.pos = 0
        return True

    def exact(self, n: int) -> memoryview | None:
        """The next n bytes (read-only), or None if the peer closed first."""
        avail = len(self.buf) - self.pos
        if avail < n and n - avail <= _RECV:
            while len(self.buf) - self.pos < n:
                if not self._more():
                    return None
            avail = len(self.buf) - self.pos
        if avail >= n:
            pos = self.pos
            self.pos = pos + n
            return memoryview(self.buf)[pos:pos + n]
        view = memoryview(np.empty(n, np.uint8))  # (a bytearray would be zero-filled first)
        view[:avail] = memoryview(self.buf)[self.pos:]
        self.buf, self.pos = b"", 0
        got = avail
        recv_into = self.sock.recv_into
        while got < n:
            k = recv_into(view[got:], n - got)
            if not k:
                return None
            got += k
        return view.toreadonly()

    def until(self, sep: bytes, limit: int) -> bytes | None:
        """Bytes up to (not including) `sep`, consumed with it; None if the peer closed first.
        Raises _HttpError(431) if more than `limit` bytes arrive without `sep`."""
        scanned = 0  # bytes after pos already searched
        while True:
            i = self.buf.find(sep, self.pos + scanned)
            if i - self.pos > limit:
                raise _HttpError(431, "request head too large")
            if i >= 0:
                out = self.buf[self.pos:i]
                self.pos = i + len(sep)
                return out
            have = len(self.buf) - self.pos
            if have > limit:
                raise _HttpError(431, "request head too large")
            scanned = max(0, have - len(sep) + 1)
            if not self._more():
                return None


def _send(sock: socket.socket, parts: Sequence[Buffer]) -> None:
    """Send parts as one stream write: joined when small, scatter/gather (no copy) when large."""
    if len(parts) == 1:
        sock.sendall(parts[0])
        return
    total = 0
    for p in parts:
        total += len(p)
    if total < _JOIN_BELOW or not _HAS_SENDMSG:
        sock.sendall(b"".join(parts))
        return
    views = [p if isinstance(p, memoryview) else memoryview(p) for p in parts if len(p)]
    while views:
        sent = sock.sendmsg(views[:512])
        while sent:
            n = len(views[0])
            if sent >= n:
                sent -= n
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0


def _linger_close(sock: socket.socket) -> None:
    """Stop sending, then drain what the client still writes (for a short while) so that the
    close does not turn into a reset that could destroy the answer before the client reads it."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(_LINGER_S)
        deadline = time.monotonic() + _LINGER_S
        while time.monotonic() < deadline and sock.recv(_RECV):
            pass
    except OSError:
        pass


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """Accepts connections and serves each one on its own daemon thread with `serve_conn`."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # many apps may (re)connect at once

    def __init__(self, family: int, address: Any, serve_conn: Callable[[socket.socket], None]) -> None:
        self.address_family = family
        self.serve_conn = serve_conn
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__(address, _ConnHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conns_lock:
            self.conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.conns_lock:
            self.conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Let each connection finish the request it is on, then see end-of-stream."""
        with self.conns_lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RD)
            except OSError:
                pass


class _ConnHandler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        try:
            self.server.serve_conn(self.request)
        except OSError as exc:  # the client went away mid-request: nothing to answer
            log.debug("event=local-connection-error error=%s", exc)


# -- Unix socket --------------------------------------------------------------------------------

class _UnixEndpoint:
    def __init__(self, predict: PredictFn, status: StatusFn, max_bytes: int,
                 explain: Callable[..., dict[str, Any]] | None = None) -> None:
        self.predict, self.status, self.max_bytes = predict, status, max_bytes
        self.explain = explain

    def serve(self, sock: socket.socket) -> None:
        rd = _Reader(sock)
        max_bytes = self.max_bytes
        while True:
            head = rd.exact(4)
            if head is None:
                return
            (n,) = _U32.unpack(head)
            if n > max_bytes:
                msg = wire.encode({}, ok=False, error={"kind": "invalid_input",
                                                       "message": f"request of {n} bytes exceeds the limit"})
                sock.sendall(_U32.pack(len(msg)) + msg)
                _linger_close(sock)
                return
            body = rd.exact(n)
            if body is None:
                return
            parts = self.answer(body)
            size = 0
            for p in parts:
                size += len(p)
            _send(sock, [_U32.pack(size), *parts])

    def answer(self, body: Buffer) -> list[Buffer]:
        try:
            arrays, header = wire.decode(body)
            if header.get("op") == "status":
                return [wire.encode({}, ok=True, status=self.status())]
            if header.get("op") == "explain" and self.explain is not None:  # issue 15: agent/explain.py
                top_k = header.get("top_k")
                return [wire.encode({}, ok=True, explanation=self.explain(binary_request(arrays, header),
                                                                          top_k if isinstance(top_k, int) else None))]
            out = _predict_meta(self.predict, binary_request(arrays, header), header)
            return wire.encode_parts(out, ok=True, **_rid(out))
        except Exception as exc:
            _, kind = error_kind(exc)
            if kind == "internal":
                log.exception("event=local-request-failed")
            return [wire.encode({}, ok=False, error={"kind": kind, "message": str(exc)})]


# -- HTTP ---------------------------------------------------------------------------------------

_REASONS = {100: "Continue", 200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            413: "Content Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            501: "Not Implemented", 503: "Service Unavailable", 505: "HTTP Version Not Supported"}
_JSON = "application/json"
_BINARY = wire.CONTENT_TYPE.encode()
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_heads: dict[tuple[int, str, str], bytes] = {}


def _status_head(code: int, ctype: str, connection: str) -> bytes:
    key = (code, ctype, connection)
    head = _heads.get(key)
    if head is None:
        conn = f"Connection: {connection}\r\n" if connection else ""
        head = _heads[key] = (f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\nContent-Type: {ctype}\r\n"
                              f"{conn}Content-Length: ").encode("ascii")
    return head


class _HttpError(Exception):
    """A request that cannot be served: answered with `code`, then the connection is closed
    (the stream may be out of sync)."""

    def __init__(self, code: int, message: str, kind: str = "bad_request") -> None:
        super().__init__(message)
        self.code, self.kind = code, kind


class _HttpEndpoint:
    def __init__(self, predict: PredictFn, status: StatusFn, max_bytes: int,
                 explain: Callable[..., dict[str, Any]] | None = None,
                 feedback: Callable[..., dict[str, Any]] | None = None) -> None:
        self.predict, self.status, self.max_bytes = predict, status, max_bytes
        self.explain = explain
        self.feedback = feedback

    def serve(self, sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        rd = _Reader(sock)
        while True:
            try:
                if not self._one(sock, rd):
                    return
            except _HttpError as exc:
                body = json.dumps({"error": {"kind": exc.kind, "message": str(exc)}}).encode()
                sock.sendall(_status_head(exc.code, _JSON, "close") + b"%d\r\n\r\n" % len(body) + body)
                _linger_close(sock)
                return

    def _one(self, sock: socket.socket, rd: _Reader) -> bool:
        """Serve one request; False when the connection is to be closed."""
        head = rd.until(b"\r\n\r\n", _MAX_HEAD)
        while head is not None and not head.strip(b"\r\n"):  # stray CRLFs between requests (RFC 9112 2.2)
            head = rd.until(b"\r\n\r\n", _MAX_HEAD)
        if head is None:
            return False
        head = head.lstrip(b"\r\n")
        line, _, rest = head.partition(b"\r\n")
        words = line.split(b" ")
        if len(words) != 3 or not words[1]:
            raise _HttpError(400, f"malformed request line {line[:100]!r}")
        method, target, version = words
        if version == b"HTTP/1.1":
            keep_alive = True
        elif version == b"HTTP/1.0":
            keep_alive = False
        elif version.startswith(b"HTTP/") and version[5:6].isdigit():
            raise _HttpError(505, f"unsupported version {version[:20]!r}")
        else:
            raise _HttpError(400, f"malformed request line {line[:100]!r}")
        headers: dict[bytes, bytes] = {}
        if rest:
            lines = rest.split(b"\r\n")
            if len(lines) > _MAX_HEADERS:
                raise _HttpError(431, f"more than {_MAX_HEADERS} header fields")
            for h in lines:
                name, colon, value = h.partition(b":")
                if not colon or not name or name != name.strip():
                    raise _HttpError(400, f"malformed header line {h[:100]!r}")
                name = name.lower()
                value = value.strip()
                if name in headers:
                    if name == b"content-length" and headers[name] != value:
                        raise _HttpError(400, "conflicting Content-Length headers")
                    value = headers[name] + b", " + value
                headers[name] = value
        conn_hdr = headers.get(b"connection", b"").lower()
        if b"close" in conn_hdr:
            keep_alive = False
        elif b"keep-alive" in conn_hdr and version == b"HTTP/1.0":
            keep_alive = True
        connection = "" if version == b"HTTP/1.1" and keep_alive else ("keep-alive" if keep_alive else "close")

        body = self._body(sock, rd, headers, version)
        path = target.decode("latin-1")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("event=http method=%s path=%s bytes=%d", method.decode("latin-1"), path, len(body))
        if path == "/v1/predict":
            if method != b"POST":
                code, ctype, parts = self._not_allowed(path, "POST")
            else:
                code, ctype, parts = self._predict(body, headers.get(b"content-type", b""))
        elif path == "/v1/explain" and self.explain is not None:  # issue 15: agent/explain.py
            from agent.explain import http_explain

            code, ctype, parts = (self._not_allowed(path, "POST") if method != b"POST"
                                  else http_explain(self.explain, body, error_kind))
        elif path == "/v1/feedback" and self.feedback is not None:  # issue 14: agent/outcomes.py
            from agent.outcomes import http_feedback

            code, ctype, parts = (self._not_allowed(path, "POST") if method != b"POST"
                                  else http_feedback(self.feedback, body, error_kind))
        elif path in ("/healthz", "/v1/status"):
            if method != b"GET":
                code, ctype, parts = self._not_allowed(path, "GET")
            elif path == "/healthz":
                st = self.status()
                ok = bool(st.get("active"))
                code, ctype, parts = 200 if ok else 503, _JSON, [json.dumps({"ok": ok}).encode()]
            else:
                code, ctype, parts = 200, _JSON, [json.dumps(self.status()).encode()]
        else:
            code, ctype, parts = 404, _JSON, [json.dumps({"error": {"kind": "not_found", "message": path}}).encode()]
        size = 0
        for p in parts:
            size += len(p)
        _send(sock, [_status_head(code, ctype, connection) + b"%d\r\n\r\n" % size, *parts])
        return keep_alive

    def _body(self, sock: socket.socket, rd: _Reader, headers: dict[bytes, bytes], version: bytes) -> Buffer:
        te = headers.get(b"transfer-encoding")
        cl = headers.get(b"content-length")
        if te is not None:
            if cl is not None:
                raise _HttpError(400, "both Transfer-Encoding and Content-Length")
            if te.lower() != b"chunked":
                raise _HttpError(501, f"unsupported Transfer-Encoding {te[:50]!r}")
            self._continue(sock, headers, version)
            return self._chunked(rd)
        if cl is None:
            return b""
        if not cl.isdigit():
            raise _HttpError(400, f"invalid Content-Length {cl[:30]!r}")
        n = int(cl)
        if n > self.max_bytes:
            raise _HttpError(413, f"body of {n} bytes exceeds the limit", kind="invalid_input")
        if n == 0:
            return b""
        if rd.buffered() == 0:
            self._continue(sock, headers, version)
        body = rd.exact(n)
        if body is None:
            raise ConnectionError("client closed the connection mid-body")
        return body

    def _continue(self, sock: socket.socket, headers: dict[bytes, bytes], version: bytes) -> None:
        if version == b"HTTP/1.1" and headers.get(b"expect", b"").lower() == b"100-continue":
            sock.sendall(_CONTINUE)

    def _chunked(self, rd: _Reader) -> bytes:
        chunks, total = [], 0
        while True:
            try:
                line = rd.until(b"\r\n", 1024)
            except _HttpError:
                raise _HttpError(400, "chunk size line too long") from None
            if line is None:
                raise ConnectionError("client closed the connection mid-body")
            size_text = line.partition(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _HttpError(400, f"malformed chunk size {line[:30]!r}") from None
            if size < 0:
                raise _HttpError(400, f"malformed chunk size {line[:30]!r}")
            if size == 0:
                while True:  # trailer fields, up to the blank line
                    trailer = rd.until(b"\r\n", _MAX_HEAD)
                    if trailer is None:
                        raise ConnectionError("client closed the connection mid-body")
                    if not trailer:
                        return b"".join(chunks)
            total += size
            if total > self.max_bytes:
                raise _HttpError(413, f"body of more than {self.max_bytes} bytes exceeds the limit",
                                 kind="invalid_input")
            data = rd.exact(size + 2)
            if data is None:
                raise ConnectionError("client closed the connection mid-body")
            if data[size:] != b"\r\n":
                raise _HttpError(400, "chunk not followed by CRLF")
            chunks.append(data[:size])

    @staticmethod
    def _not_allowed(path: str, allowed: str) -> tuple[int, str, list[Buffer]]:
        return 405, _JSON, [json.dumps({"error": {"kind": "method_not_allowed",
                                                  "message": f"{path} accepts {allowed} only"}}).encode()]

    def _predict(self, body: Buffer, ctype: bytes) -> tuple[int, str, list[Buffer]]:
        binary = ctype.startswith(_BINARY)
        try:
            if binary:
                arrays, header = wire.decode(body)
                out = _predict_meta(self.predict, binary_request(arrays, header), header)
                return 200, wire.CONTENT_TYPE, wire.encode_parts(out, ok=True, **_rid(out))
            try:
                doc = json.loads(body if isinstance(body, bytes) else body.tobytes())
            except RecursionError:
                raise InputError("body is JSON nested too deeply") from None
            except ValueError as exc:
                raise InputError(f"body is not JSON: {exc}") from None
            inputs = doc.get("inputs") if isinstance(doc, dict) else doc
            if not isinstance(inputs, (dict, list)):
                raise InputError("JSON body must be {\"inputs\": {name: array}} or an array")
            meta = doc.get("metadata") if isinstance(doc, dict) else None
            outputs = (self.predict(inputs, meta) if isinstance(meta, dict)  # slice keys (issue 14)
                       else self.predict(inputs))  # nested lists: the spec check makes (and vets) the arrays
            answer = {"outputs": {k: np.asarray(v).tolist() for k, v in outputs.items()}}
            if getattr(outputs, "request_id", ""):
                answer["request_id"] = outputs.request_id  # type: ignore[attr-defined]
            return 200, _JSON, [json.dumps(answer).encode()]
        except Exception as exc:
            code, kind = error_kind(exc)
            if kind == "internal":
                log.exception("event=local-request-failed")
            if binary:
                return code, wire.CONTENT_TYPE, [wire.encode({}, ok=False, error={"kind": kind, "message": str(exc)})]
            return code, _JSON, [json.dumps({"error": {"kind": kind, "message": str(exc)}}).encode()]


class LocalServer:
    """Starts whichever endpoints are configured; `http_port` is the bound port (0 picks one)."""

    def __init__(self, predict: PredictFn, status: StatusFn, unix_socket: str = "", http_port: int | None = None,
                 max_bytes: int = 64 * 1024 * 1024, explain: Callable[..., dict[str, Any]] | None = None,
                 feedback: Callable[..., dict[str, Any]] | None = None) -> None:
        self.unix_socket = unix_socket
        self._servers: list[_Server] = []
        self.http_port: int | None = None
        if unix_socket:
            p = Path(unix_socket)
            p.parent.mkdir(parents=True, exist_ok=True)
            if p.exists() or p.is_socket():
                p.unlink()
            srv = _Server(socket.AF_UNIX, str(p), _UnixEndpoint(predict, status, max_bytes, explain).serve)
            os.chmod(p, 0o660)
            self._servers.append(srv)
        if http_port is not None:
            hs = _Server(socket.AF_INET, ("127.0.0.1", http_port), _HttpEndpoint(predict, status, max_bytes, explain,
                                                                                feedback).serve)
            self.http_port = hs.server_address[1]
            self._servers.append(hs)

    def start(self) -> None:
        for s in self._servers:
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, name="local-server",
                             daemon=True).start()

    def stop(self) -> None:
        for s in self._servers:
            s.shutdown()
            s.server_close()
            s.close_connections()
        if self.unix_socket:
            Path(self.unix_socket).unlink(missing_ok=True)


class LocalClient:
    """Unix-socket client with a persistent connection (used by the CLI, tests and benchmark).

    The timeout is applied with SO_RCVTIMEO/SO_SNDTIMEO on a blocking socket where the platform
    allows it, which saves the poll() that Python's own socket timeouts add before every send
    and receive; either way a call that takes longer raises TimeoutError."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        try:
            tv = struct.pack("ll", int(timeout), int((timeout % 1) * 1_000_000))
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
            self.sock.settimeout(None)
        except (OSError, struct.error, AttributeError):
            self.sock.settimeout(timeout)
        self._rd = _Reader(self.sock)

    def call(self, arrays: dict[str, np.ndarray], **fields: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        parts = wire.encode_parts(arrays, **fields)
        size = 0
        for p in parts:
            size += len(p)
        try:
            _send(self.sock, [_U32.pack(size), *parts])
            head = self._rd.exact(4)
            if head is None:
                raise ConnectionError("server closed the connection")
            (n,) = _U32.unpack(head)
            body = self._rd.exact(n)
        except BlockingIOError:  # SO_RCVTIMEO / SO_SNDTIMEO expired
            raise TimeoutError("the local server did not answer in time") from None
        if body is None:
            raise ConnectionError("server closed the connection")
        return wire.decode(body)

    def explain(self, arrays: dict[str, np.ndarray], top_k: int | None = None) -> dict[str, Any]:
        """Per-feature attributions for `arrays` (Agent.explain over the socket)."""
        _, header = self.call(arrays, op="explain", top_k=top_k)
        if not header.get("ok"):
            err = header.get("error", {})
            raise LocalRequestError(err.get("kind", "internal"), err.get("message", ""))
        return dict(header["explanation"])

    def predict(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out, header = self.call(arrays)
        if not header.get("ok"):
            err = header.get("error", {})
            raise LocalRequestError(err.get("kind", "internal"), err.get("message", ""))
        return out

    def close(self) -> None:
        self.sock.close()


class LocalRequestError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
