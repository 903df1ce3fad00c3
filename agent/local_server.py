"""Local inference for apps on the device: a Unix socket (binary EFT1 frames, persistent
connections) and/or HTTP on 127.0.0.1 (JSON or EFT1 bodies). Each request is handled on its
own thread; an error answers that request only and never affects the next.

Unix socket protocol: client sends u32 length + EFT1 message (header may carry "op": "predict"
(default) or "status"); server answers u32 length + EFT1 message whose header has "ok" and,
on failure, "error": {"kind", "message"}.

HTTP: POST /v1/predict with application/json {"inputs": {name: nested list}} (or a bare list
for single-input models), or with Content-Type application/x-edgefleet-tensors; GET /v1/status;
GET /healthz.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import struct
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from agent import wire
from agent.serving import NoModelError, PredictError
from agent.spec_check import InputError

log = logging.getLogger(__name__)

PredictFn = Callable[[Any], dict[str, np.ndarray]]
StatusFn = Callable[[], dict[str, Any]]


def error_kind(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, (InputError, wire.WireError)):
        return 400, "invalid_input"
    if isinstance(exc, NoModelError):
        return 503, "no_model"
    if isinstance(exc, PredictError):
        return 500, "runtime"
    return 500, "internal"


class _UnixHandler(socketserver.BaseRequestHandler):
    server: _UnixServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        rfile = sock.makefile("rb", buffering=1 << 16)  # header and body usually in one recv
        while True:
            head = rfile.read(4)
            if len(head) < 4:
                return
            (n,) = struct.unpack("<I", head)
            if n > self.server.max_bytes:
                self._send(wire.encode({}, ok=False, error={"kind": "invalid_input",
                                                            "message": f"request of {n} bytes exceeds the limit"}))
                return
            body = rfile.read(n)
            if len(body) < n:
                return
            self._send(self.server.answer(body))

    def _send(self, msg: bytes) -> None:
        self.request.sendall(struct.pack("<I", len(msg)) + msg)


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, predict: PredictFn, status: StatusFn, max_bytes: int) -> None:
        self.predict, self.status, self.max_bytes = predict, status, max_bytes
        super().__init__(path, _UnixHandler)

    def answer(self, body: bytes) -> bytes:
        try:
            arrays, header = wire.decode(body)
            if header.get("op") == "status":
                return wire.encode({}, ok=True, status=self.status())
            outputs = self.predict(arrays)
            return wire.encode(outputs, ok=True)
        except Exception as exc:
            _, kind = error_kind(exc)
            if kind == "internal":
                log.exception("event=local-request-failed")
            return wire.encode({}, ok=False, error={"kind": kind, "message": str(exc)})


class _HttpHandler(BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("event=http %s", format % args)

    def _reply(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj: Any) -> None:
        self._reply(code, json.dumps(obj).encode())

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        if self.path == "/healthz":
            st = self.server.status()
            self._json(200 if st.get("active") else 503, {"ok": bool(st.get("active"))})
        elif self.path == "/v1/status":
            self._json(200, self.server.status())
        else:
            self._json(404, {"error": {"kind": "not_found", "message": self.path}})

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/v1/predict":
            self._json(404, {"error": {"kind": "not_found", "message": self.path}})
            return
        n = int(self.headers.get("Content-Length") or 0)
        if n > self.server.max_bytes:
            self.close_connection = True
            self._json(413, {"error": {"kind": "invalid_input", "message": f"body of {n} bytes exceeds the limit"}})
            return
        body = self.rfile.read(n)
        binary = (self.headers.get("Content-Type") or "").startswith(wire.CONTENT_TYPE)
        try:
            if binary:
                arrays, _ = wire.decode(body)
                outputs = self.server.predict(arrays)
                self._reply(200, wire.encode(outputs, ok=True), wire.CONTENT_TYPE)
                return
            try:
                doc = json.loads(body)
            except ValueError as exc:
                raise InputError(f"body is not JSON: {exc}") from None
            inputs = doc.get("inputs") if isinstance(doc, dict) else doc
            if isinstance(inputs, dict):
                inputs = {k: np.asarray(v) for k, v in inputs.items()}
            elif isinstance(inputs, list):
                inputs = np.asarray(inputs)
            else:
                raise InputError("JSON body must be {\"inputs\": {name: array}} or an array")
            outputs = self.server.predict(inputs)
            self._json(200, {"outputs": {k: np.asarray(v).tolist() for k, v in outputs.items()}})
        except Exception as exc:
            code, kind = error_kind(exc)
            if kind == "internal":
                log.exception("event=local-request-failed")
            if binary:
                self._reply(code, wire.encode({}, ok=False, error={"kind": kind, "message": str(exc)}),
                            wire.CONTENT_TYPE)
            else:
                self._json(code, {"error": {"kind": kind, "message": str(exc)}})


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, predict: PredictFn, status: StatusFn, max_bytes: int) -> None:
        self.predict, self.status, self.max_bytes = predict, status, max_bytes
        super().__init__(("127.0.0.1", port), _HttpHandler)


class LocalServer:
    """Starts whichever endpoints are configured; `http_port` is the bound port (0 picks one)."""

    def __init__(self, predict: PredictFn, status: StatusFn, unix_socket: str = "", http_port: int | None = None,
                 max_bytes: int = 64 * 1024 * 1024) -> None:
        self.unix_socket = unix_socket
        self._servers: list[socketserver.BaseServer] = []
        self.http_port: int | None = None
        if unix_socket:
            p = Path(unix_socket)
            p.parent.mkdir(parents=True, exist_ok=True)
            if p.exists() or p.is_socket():
                p.unlink()
            srv = _UnixServer(str(p), predict, status, max_bytes)
            os.chmod(p, 0o660)
            self._servers.append(srv)
        if http_port is not None:
            hs = _HttpServer(http_port, predict, status, max_bytes)
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
        if self.unix_socket:
            Path(self.unix_socket).unlink(missing_ok=True)


class LocalClient:
    """Unix-socket client with a persistent connection (used by the CLI, tests and benchmark)."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self._rfile = self.sock.makefile("rb", buffering=1 << 16)

    def call(self, arrays: dict[str, np.ndarray], **fields: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        msg = wire.encode(arrays, **fields)
        self.sock.sendall(struct.pack("<I", len(msg)) + msg)
        head = self._rfile.read(4)
        if len(head) < 4:
            raise ConnectionError("server closed the connection")
        (n,) = struct.unpack("<I", head)
        body = self._rfile.read(n)
        if len(body) < n:
            raise ConnectionError("server closed the connection")
        return wire.decode(body)

    def predict(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out, header = self.call(arrays)
        if not header.get("ok"):
            err = header.get("error", {})
            raise LocalRequestError(err.get("kind", "internal"), err.get("message", ""))
        return out

    def close(self) -> None:
        self._rfile.close()
        self.sock.close()


class LocalRequestError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
