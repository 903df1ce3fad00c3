"""The client's reading of answers that are not the fleet's own: a proxy's HTML error page, a
non-JSON 200 (the URL points at something else), a plain-text 503; each is one useful line."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edgefleet.ops.client import ApiClient, OpsError

ANSWERS = {
    "/html-502": (502, "text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
    "/plain-503": (503, "text/plain", b"fleet is starting\nretry later"),
    "/not-json": (200, "text/html", b"<html>a wiki</html>"),
    "/api-409": (409, "application/json", b'{"error": {"code": "busy", "message": "rollout 3 is running"}}'),
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        status, ctype, body = ANSWERS[self.path]
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("path, line, code", [
    ("/html-502", "Bad Gateway (HTTP 502)", 1),
    ("/plain-503", "fleet is starting (HTTP 503)", 1),
    ("/not-json", "is not JSON; is this an EdgeFleet fleet manager URL?", 1),
    ("/api-409", "rollout 3 is running (HTTP 409 busy)", 1),
])
def test_foreign_answers_become_one_line(server: str, path: str, line: str, code: int) -> None:
    with pytest.raises(OpsError) as exc:
        ApiClient(server, "tok").get(path)
    assert line in exc.value.message and "\n" not in exc.value.message and "<" not in exc.value.message
    assert exc.value.exit_code == code
