"""Local inference for apps on the device: a Unix socket (binary EFT1 frames, persistent
connections; agent.local_unix) and/or HTTP/1.1 on 127.0.0.1 (JSON or EFT1 bodies, keep-alive;
agent.local_http over agent.http_wire). Each connection is served on its own thread, which
reads, predicts and answers in place: no handoff between threads on the request path. An error
answers that request only and never affects the next.

HTTP: POST /v1/predict with application/json {"inputs": {name: nested list}} (or a bare list
for single-input models), or with Content-Type application/x-edgefleet-tensors; GET /v1/status;
GET /healthz. Connections are persistent (HTTP/1.1 default, or HTTP/1.0 with
"Connection: keep-alive"), requests may be pipelined, bodies come with Content-Length or
chunked, "Expect: 100-continue" is honoured. A body over the limit gets 413 and a malformed
request 400 (or 431 for an oversized head), after which the connection is closed.

The request path is deliberately lean (agent.local_io): bytes are received into one buffer per
message, tensors are decoded as views of it, answers leave in one send, and TCP_NODELAY is set
so that a response is never held back by Nagle's algorithm.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agent.config import ServingConfig
from agent.local_http import HttpEndpoint
from agent.local_io import ConnServer, PredictFn, StatusFn, error_kind
from agent.local_unix import LocalClient, LocalRequestError, UnixEndpoint

__all__ = ["LocalApi", "LocalClient", "LocalRequestError", "LocalServer", "error_kind"]


class LocalApi(Protocol):
    """What the local endpoints serve (agent.daemon.Agent is one)."""

    def predict(self, inputs: Any, metadata: dict[str, Any] | None = None) -> dict[str, np.ndarray]: ...

    def status(self) -> dict[str, Any]: ...

    def explain(self, inputs: Any, top_k: int | None = None) -> dict[str, Any]: ...

    def feedback(self, request_id: str, label: Any) -> dict[str, Any]: ...


class LocalServer:
    """Starts whichever endpoints are configured; `http_port` is the bound port (0 picks one)."""

    def __init__(self, predict: PredictFn, status: StatusFn, unix_socket: str = "", http_port: int | None = None,
                 max_bytes: int = 64 * 1024 * 1024, explain: Callable[..., dict[str, Any]] | None = None,
                 feedback: Callable[..., dict[str, Any]] | None = None) -> None:
        self.unix_socket = unix_socket
        self._servers: list[ConnServer] = []
        self.http_port: int | None = None
        if unix_socket:
            p = Path(unix_socket)
            p.parent.mkdir(parents=True, exist_ok=True)
            if p.exists() or p.is_socket():
                p.unlink()
            srv = ConnServer(socket.AF_UNIX, str(p), UnixEndpoint(predict, status, max_bytes, explain).serve)
            os.chmod(p, 0o660)
            self._servers.append(srv)
        if http_port is not None:
            hs = ConnServer(socket.AF_INET, ("127.0.0.1", http_port),
                            HttpEndpoint(predict, status, max_bytes, explain, feedback).serve)
            self.http_port = hs.server_address[1]
            self._servers.append(hs)

    @classmethod
    def from_config(cls, api: LocalApi, serving: ServingConfig) -> LocalServer:
        """The endpoints the `[serving]` section names (an http_port of 0 there means off)."""
        return cls(api.predict, api.status, serving.unix_socket, serving.http_port or None,
                   serving.max_request_bytes, explain=api.explain, feedback=api.feedback)

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
