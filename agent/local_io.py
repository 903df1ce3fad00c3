"""Socket plumbing shared by the local endpoints (agent.local_server): buffered reads that hand
out views instead of copies, answers sent in one stream write, a lingering close after a
refusal, a threaded server that tracks its connections, and the error kinds answers carry.

The request path is deliberately lean: bytes are received into one buffer per message,
tensors are decoded as views of it, and answers leave in one send (scatter/gather for large
tensors, so they are not copied).
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from agent import wire
from agent.serving import NoModelError, PredictError
from agent.spec_check import InputError

log = logging.getLogger("agent.local_server")

Buffer = bytes | memoryview
PredictFn = Callable[..., dict[str, np.ndarray]]  # Agent.predict(inputs, metadata=None)
StatusFn = Callable[[], dict[str, Any]]

_RECV = 1 << 16  # bytes asked of one recv(); larger messages are received in place
_JOIN_BELOW = 1 << 16  # answers smaller than this are joined and sent with sendall
_LINGER_S = 1.0  # after refusing a request, read and drop what the client still sends, then close
_HAS_SENDMSG = hasattr(socket.socket, "sendmsg")


def error_kind(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and error kind a failed request is answered with."""
    if isinstance(exc, (InputError, wire.WireError)):
        return 400, "invalid_input"
    if isinstance(exc, NoModelError):
        return 503, "no_model"
    if isinstance(exc, PredictError):
        return 500, "runtime"
    return 500, "internal"


def predict_meta(predict: PredictFn, inputs: Any, header: dict[str, Any]) -> Any:
    """Predict with the request's `metadata` (slice keys, issue 14) when the EFT1 header has one."""
    meta = header.get("metadata")
    return predict(inputs, meta) if isinstance(meta, dict) else predict(inputs)


def request_id(outputs: Any) -> dict[str, str]:
    """The prediction's request id for the answer header (Agent.feedback takes it later)."""
    rid = getattr(outputs, "request_id", "")
    return {"request_id": rid} if rid else {}


class HttpError(Exception):
    """A request that cannot be served: answered with `code`, then the connection is closed
    (the stream may be out of sync)."""

    def __init__(self, code: int, message: str, kind: str = "bad_request") -> None:
        super().__init__(message)
        self.code, self.kind = code, kind


class Reader:
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
        view = np.empty(n, np.uint8).data  # a writable view (a bytearray would be zero-filled first)
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
        Raises HttpError(431) if more than `limit` bytes arrive without `sep`."""
        scanned = 0  # bytes after pos already searched
        while True:
            i = self.buf.find(sep, self.pos + scanned)
            if i - self.pos > limit:
                raise HttpError(431, "request head too large")
            if i >= 0:
                out = self.buf[self.pos:i]
                self.pos = i + len(sep)
                return out
            have = len(self.buf) - self.pos
            if have > limit:
                raise HttpError(431, "request head too large")
            scanned = max(0, have - len(sep) + 1)
            if not self._more():
                return None


def send(sock: socket.socket, parts: Sequence[Buffer]) -> None:
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


def linger_close(sock: socket.socket) -> None:
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


class ConnServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
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
    server: ConnServer

    def handle(self) -> None:
        try:
            self.server.serve_conn(self.request)
        except OSError as exc:  # the client went away mid-request: nothing to answer
            log.debug("event=local-connection-error error=%s", exc)
