"""The local HTTP endpoint (127.0.0.1 only): routes and their handlers. Framing lives in
agent.http_wire, socket plumbing in agent.local_io.

POST /v1/predict takes application/json {"inputs": {name: nested list}, "metadata"?: {...}}
(or a bare list for single-input models), or an application/x-edgefleet-tensors (EFT1) body;
GET /v1/status and GET /healthz; POST /v1/explain (agent.explain) and POST /v1/feedback
(agent.outcomes) where the agent serves them. Connections are persistent and requests may be
pipelined; a refused request (400, 413, 431, ...) closes the connection.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from agent import wire
from agent.features import binary_request
from agent.http_wire import Request, read_body, read_head, status_head
from agent.local_io import (
    Buffer,
    HttpError,
    PredictFn,
    Reader,
    StatusFn,
    error_kind,
    linger_close,
    predict_meta,
    request_id,
    send,
)
from agent.spec_check import InputError

log = logging.getLogger("agent.local_server")

Answer = tuple[int, str, Sequence[Buffer]]
Handler = Callable[[Buffer, Request], Answer]

_JSON = "application/json"
_BINARY = wire.CONTENT_TYPE.encode()


def _json(code: int, doc: Any) -> Answer:
    return code, _JSON, [json.dumps(doc).encode()]


class HttpEndpoint:
    """Serves one connection's requests in order; routes are a table of path -> (method, handler)."""

    def __init__(self, predict: PredictFn, status: StatusFn, max_bytes: int,
                 explain: Callable[..., dict[str, Any]] | None = None,
                 feedback: Callable[..., dict[str, Any]] | None = None) -> None:
        self.predict, self.status, self.max_bytes = predict, status, max_bytes
        self.routes: dict[str, tuple[bytes, Handler]] = {
            "/v1/predict": (b"POST", self._predict),
            "/healthz": (b"GET", self._healthz),
            "/v1/status": (b"GET", self._status),
        }
        if explain is not None:  # issue 15: agent/explain.py
            self.routes["/v1/explain"] = (b"POST", _explain_route(explain))
        if feedback is not None:  # issue 14: agent/outcomes.py
            self.routes["/v1/feedback"] = (b"POST", _feedback_route(feedback))

    def serve(self, sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # never held back by Nagle
        except OSError:
            pass
        rd = Reader(sock)
        while True:
            try:
                if not self._one(sock, rd):
                    return
            except HttpError as exc:
                body = json.dumps({"error": {"kind": exc.kind, "message": str(exc)}}).encode()
                sock.sendall(status_head(exc.code, _JSON, "close") + b"%d\r\n\r\n" % len(body) + body)
                linger_close(sock)
                return

    def _one(self, sock: socket.socket, rd: Reader) -> bool:
        """Serve one request; False when the connection is to be closed."""
        req = read_head(rd)
        if req is None:
            return False
        body = read_body(sock, rd, req, self.max_bytes)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("event=http method=%s path=%s bytes=%d", req.method.decode("latin-1"), req.path, len(body))
        code, ctype, parts = self._route(req, body)
        size = 0
        for p in parts:
            size += len(p)
        send(sock, [status_head(code, ctype, req.connection) + b"%d\r\n\r\n" % size, *parts])
        return req.keep_alive

    def _route(self, req: Request, body: Buffer) -> Answer:
        route = self.routes.get(req.path)
        if route is None:
            return _json(404, {"error": {"kind": "not_found", "message": req.path}})
        method, handler = route
        if req.method != method:
            return _json(405, {"error": {"kind": "method_not_allowed",
                                         "message": f"{req.path} accepts {method.decode()} only"}})
        return handler(body, req)

    def _healthz(self, body: Buffer, req: Request) -> Answer:
        ok = bool(self.status().get("active"))
        return _json(200 if ok else 503, {"ok": ok})

    def _status(self, body: Buffer, req: Request) -> Answer:
        return _json(200, self.status())

    def _predict(self, body: Buffer, req: Request) -> Answer:
        binary = req.headers.get(b"content-type", b"").startswith(_BINARY)
        try:
            if binary:
                arrays, header = wire.decode(body)
                out = predict_meta(self.predict, binary_request(arrays, header), header)
                return 200, wire.CONTENT_TYPE, wire.encode_parts(out, ok=True, **request_id(out))
            return _json(200, self._predict_json(body))
        except Exception as exc:
            code, kind = error_kind(exc)
            if kind == "internal":
                log.exception("event=local-request-failed")
            if binary:
                return code, wire.CONTENT_TYPE, [wire.encode({}, ok=False, error={"kind": kind, "message": str(exc)})]
            return _json(code, {"error": {"kind": kind, "message": str(exc)}})

    def _predict_json(self, body: Buffer) -> dict[str, Any]:
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
        answer: dict[str, Any] = {"outputs": {k: np.asarray(v).tolist() for k, v in outputs.items()}}
        answer.update(request_id(outputs))
        return answer


def _explain_route(explain: Callable[..., dict[str, Any]]) -> Handler:
    def handle(body: Buffer, req: Request) -> Answer:
        from agent.explain import http_explain

        return http_explain(explain, body, error_kind)
    return handle


def _feedback_route(feedback: Callable[..., dict[str, Any]]) -> Handler:
    def handle(body: Buffer, req: Request) -> Answer:
        from agent.outcomes import http_feedback

        return http_feedback(feedback, body, error_kind)
    return handle
