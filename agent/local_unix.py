"""The local Unix-socket protocol, both ends: binary EFT1 frames on persistent connections.

The client sends u32 length + EFT1 message (the header may carry "op": "predict" (default),
"status" or "explain"); the server answers u32 length + EFT1 message whose header has "ok" and,
on failure, "error": {"kind", "message"}. Requests may be pipelined; answers come in order.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from agent import wire
from agent.features import binary_request
from agent.local_io import (
    Buffer,
    PredictFn,
    Reader,
    StatusFn,
    error_kind,
    linger_close,
    predict_meta,
    request_id,
    send,
)

log = logging.getLogger("agent.local_server")

_U32 = struct.Struct("<I")


class UnixEndpoint:
    """Serves one connection's EFT1 requests in order."""

    def __init__(self, predict: PredictFn, status: StatusFn, max_bytes: int,
                 explain: Callable[..., dict[str, Any]] | None = None) -> None:
        self.predict, self.status, self.max_bytes = predict, status, max_bytes
        self.explain = explain

    def serve(self, sock: socket.socket) -> None:
        rd = Reader(sock)
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
                linger_close(sock)
                return
            body = rd.exact(n)
            if body is None:
                return
            parts = self.answer(body)
            size = 0
            for p in parts:
                size += len(p)
            send(sock, [_U32.pack(size), *parts])

    def answer(self, body: Buffer) -> list[Buffer]:
        try:
            arrays, header = wire.decode(body)
            if header.get("op") == "status":
                return [wire.encode({}, ok=True, status=self.status())]
            if header.get("op") == "explain" and self.explain is not None:  # issue 15: agent/explain.py
                top_k = header.get("top_k")
                return [wire.encode({}, ok=True, explanation=self.explain(binary_request(arrays, header),
                                                                          top_k if isinstance(top_k, int) else None))]
            out = predict_meta(self.predict, binary_request(arrays, header), header)
            return wire.encode_parts(out, ok=True, **request_id(out))
        except Exception as exc:
            _, kind = error_kind(exc)
            if kind == "internal":
                log.exception("event=local-request-failed")
            return [wire.encode({}, ok=False, error={"kind": kind, "message": str(exc)})]


class LocalRequestError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


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
        self._rd = Reader(self.sock)

    def call(self, arrays: dict[str, np.ndarray], **fields: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        parts = wire.encode_parts(arrays, **fields)
        size = 0
        for p in parts:
            size += len(p)
        try:
            send(self.sock, [_U32.pack(size), *parts])
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
