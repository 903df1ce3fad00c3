"""HTTP/1.1 framing for the local endpoint (agent.local_http): the request line and headers,
keep-alive, bodies with Content-Length or chunked, "Expect: 100-continue", and cached status
heads. A small parser instead of http.server, whose per-request header parsing, logging and
separate header/body writes cost far more than a tiny model.

Anything malformed raises local_io.HttpError (400, 413, 431, 501, 505): the request is answered
with that code and the connection closed.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from agent.local_io import Buffer, HttpError, Reader

_MAX_HEAD = 1 << 16  # request line and headers (http.server's line limit)
_MAX_HEADERS = 100
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_REASONS = {100: "Continue", 200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            413: "Content Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            501: "Not Implemented", 503: "Service Unavailable", 505: "HTTP Version Not Supported"}
_heads: dict[tuple[int, str, str], bytes] = {}


@dataclass(slots=True)
class Request:
    method: bytes
    path: str
    version: bytes
    headers: dict[bytes, bytes]
    keep_alive: bool

    @property
    def connection(self) -> str:
        """The Connection header of the answer ("" where HTTP/1.1's default says it)."""
        if self.version == b"HTTP/1.1" and self.keep_alive:
            return ""
        return "keep-alive" if self.keep_alive else "close"


def status_head(code: int, ctype: str, connection: str) -> bytes:
    """The status line and headers up to "Content-Length: " (the caller adds the length)."""
    key = (code, ctype, connection)
    head = _heads.get(key)
    if head is None:
        conn = f"Connection: {connection}\r\n" if connection else ""
        head = _heads[key] = (f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\nContent-Type: {ctype}\r\n"
                              f"{conn}Content-Length: ").encode("ascii")
    return head


def read_head(rd: Reader) -> Request | None:
    """The next request's line and headers; None when the client closed the connection."""
    head = rd.until(b"\r\n\r\n", _MAX_HEAD)
    while head is not None and not head.strip(b"\r\n"):  # stray CRLFs between requests (RFC 9112 2.2)
        head = rd.until(b"\r\n\r\n", _MAX_HEAD)
    if head is None:
        return None
    line, _, rest = head.lstrip(b"\r\n").partition(b"\r\n")
    words = line.split(b" ")
    if len(words) != 3 or not words[1]:
        raise HttpError(400, f"malformed request line {line[:100]!r}")
    method, target, version = words
    if version == b"HTTP/1.1":
        keep_alive = True
    elif version == b"HTTP/1.0":
        keep_alive = False
    elif version.startswith(b"HTTP/") and version[5:6].isdigit():
        raise HttpError(505, f"unsupported version {version[:20]!r}")
    else:
        raise HttpError(400, f"malformed request line {line[:100]!r}")
    headers = _headers(rest) if rest else {}
    conn_hdr = headers.get(b"connection", b"").lower()
    if b"close" in conn_hdr:
        keep_alive = False
    elif b"keep-alive" in conn_hdr and version == b"HTTP/1.0":
        keep_alive = True
    return Request(method, target.decode("latin-1"), version, headers, keep_alive)


def _headers(rest: bytes) -> dict[bytes, bytes]:
    """Header fields by lower-case name; repeated fields are joined with ", "."""
    headers: dict[bytes, bytes] = {}
    lines = rest.split(b"\r\n")
    if len(lines) > _MAX_HEADERS:
        raise HttpError(431, f"more than {_MAX_HEADERS} header fields")
    for h in lines:
        name, colon, value = h.partition(b":")
        if not colon or not name or name != name.strip():
            raise HttpError(400, f"malformed header line {h[:100]!r}")
        name = name.lower()
        value = value.strip()
        if name in headers:
            if name == b"content-length" and headers[name] != value:
                raise HttpError(400, "conflicting Content-Length headers")
            value = headers[name] + b", " + value
        headers[name] = value
    return headers


def read_body(sock: socket.socket, rd: Reader, req: Request, max_bytes: int) -> Buffer:
    """The request body (a view into the receive buffer where possible), at most `max_bytes`."""
    te = req.headers.get(b"transfer-encoding")
    cl = req.headers.get(b"content-length")
    if te is not None:
        if cl is not None:
            raise HttpError(400, "both Transfer-Encoding and Content-Length")
        if te.lower() != b"chunked":
            raise HttpError(501, f"unsupported Transfer-Encoding {te[:50]!r}")
        _continue(sock, req)
        return _chunked(rd, max_bytes)
    if cl is None:
        return b""
    if not cl.isdigit():
        raise HttpError(400, f"invalid Content-Length {cl[:30]!r}")
    n = int(cl)
    if n > max_bytes:
        raise HttpError(413, f"body of {n} bytes exceeds the limit", kind="invalid_input")
    if n == 0:
        return b""
    if rd.buffered() == 0:
        _continue(sock, req)
    body = rd.exact(n)
    if body is None:
        raise ConnectionError("client closed the connection mid-body")
    return body


def _continue(sock: socket.socket, req: Request) -> None:
    if req.version == b"HTTP/1.1" and req.headers.get(b"expect", b"").lower() == b"100-continue":
        sock.sendall(_CONTINUE)


def _chunked(rd: Reader, max_bytes: int) -> bytes:
    chunks: list[Buffer] = []
    total = 0
    while True:
        size = _chunk_size(rd)
        if size == 0:
            _skip_trailers(rd)
            return b"".join(chunks)
        total += size
        if total > max_bytes:
            raise HttpError(413, f"body of more than {max_bytes} bytes exceeds the limit", kind="invalid_input")
        data = rd.exact(size + 2)
        if data is None:
            raise ConnectionError("client closed the connection mid-body")
        if data[size:] != b"\r\n":
            raise HttpError(400, "chunk not followed by CRLF")
        chunks.append(data[:size])


def _chunk_size(rd: Reader) -> int:
    try:
        line = rd.until(b"\r\n", 1024)
    except HttpError:
        raise HttpError(400, "chunk size line too long") from None
    if line is None:
        raise ConnectionError("client closed the connection mid-body")
    try:
        size = int(line.partition(b";")[0].strip(), 16)
    except ValueError:
        raise HttpError(400, f"malformed chunk size {line[:30]!r}") from None
    if size < 0:
        raise HttpError(400, f"malformed chunk size {line[:30]!r}")
    return size


def _skip_trailers(rd: Reader) -> None:
    """Trailer fields, up to the blank line."""
    while True:
        trailer = rd.until(b"\r\n", _MAX_HEAD)
        if trailer is None:
            raise ConnectionError("client closed the connection mid-body")
        if not trailer:
            return
