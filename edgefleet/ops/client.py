"""HTTP to the fleet manager's REST API (urllib: no dependency beyond the standard library), with
every failure turned into one line an operator can act on and the exit code the CLI promises:
2 for bad input (a wrong id, an invalid spec, no URL configured), 1 for an operation the fleet
refused or could not do (auth, conflicts, server errors, an unreachable fleet)."""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import click

BAD_INPUT, FAILED = 2, 1
# HTTP status -> exit code; anything else 4xx/5xx is a refused or failed operation (1).
STATUS_EXIT = {400: BAD_INPUT, 404: BAD_INPUT, 405: BAD_INPUT, 413: BAD_INPUT, 415: BAD_INPUT, 422: BAD_INPUT}
# What to add to the server's message, so the line says what to do next.
STATUS_HINT = {
    401: "check the token (--token, $EDGEFLEET_TOKEN or the profile)",
    403: "this token's role may not do this; ask an admin for an operator token",
}


class OpsError(click.ClickException):
    """One line on stderr and a non-zero exit; never a traceback."""

    def __init__(self, message: str, exit_code: int = FAILED, status: int | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.exit_code, self.status, self.code = exit_code, status, code


@dataclass(frozen=True)
class Response:
    status: int
    body: Any


@dataclass
class ApiClient:
    """Bearer-token JSON client for one fleet manager."""

    url: str
    token: str = ""
    timeout_s: float = 30.0
    token_source: str = ""

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise OpsError(f"invalid fleet URL {self.url!r}: expected http(s)://host[:port]", BAD_INPUT)
        self.url = self.url.rstrip("/")

    def get(self, path: str, **query: Any) -> Any:
        return self.call("GET", path, query=query).body

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.call("POST", path, json_body=body or {}).body

    def upload(self, path: str, file: Path) -> Response:
        """Stream a file as the request body (bundles can be large)."""
        with open(file, "rb") as fh:
            return self.call("POST", path, stream=fh, length=file.stat().st_size)

    def call(self, method: str, path: str, *, query: dict[str, Any] | None = None,
             json_body: dict[str, Any] | None = None, stream: BinaryIO | None = None,
             length: int = 0) -> Response:
        q = {k: v for k, v in (query or {}).items() if v is not None and v != ""}
        full = self.url + path + ("?" + urllib.parse.urlencode(q) if q else "")
        headers = {"Accept": "application/json", "User-Agent": "edgefleet-cli"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data: Any = None
        if json_body is not None:
            data = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        elif stream is not None:
            data = stream
            headers["Content-Type"] = "application/octet-stream"
            headers["Content-Length"] = str(length)
        req = urllib.request.Request(full, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return Response(resp.status, self._decode(resp.read(), resp.headers.get("Content-Type", "")))
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc) from None
        except urllib.error.URLError as exc:
            raise OpsError(f"cannot reach the fleet at {self.url}: {_reason(exc.reason)}") from None
        except TimeoutError:
            raise OpsError(f"the fleet at {self.url} did not answer within {self.timeout_s:g}s") from None
        except (ConnectionError, OSError) as exc:
            raise OpsError(f"cannot reach the fleet at {self.url}: {_reason(exc)}") from None

    def _decode(self, raw: bytes, content_type: str) -> Any:
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise OpsError(f"{self.url} answered with {content_type or 'something'} that is not JSON; "
                           "is this an EdgeFleet fleet manager URL?") from None

    def _http_error(self, exc: urllib.error.HTTPError) -> OpsError:
        raw = exc.read() or b""
        code, message = "", ""
        try:
            err = json.loads(raw).get("error") or {}
            code, message = str(err.get("code") or ""), str(err.get("message") or "")
        except (ValueError, AttributeError):
            # not the fleet's JSON error (a proxy's HTML page, say): only a short plain-text body is worth a line
            text = raw.decode(errors="replace").strip()
            if text and "<" not in text[:1] and "text/plain" in (exc.headers.get("Content-Type") or ""):
                message = text.splitlines()[0][:200]
        status = exc.code
        line = f"{message or exc.reason} (HTTP {status}{' ' + code if code else ''})"
        hint = STATUS_HINT.get(status)
        if status == 401 and not self.token:
            hint = "no token configured: pass --token, set EDGEFLEET_TOKEN or add a token to the profile"
        elif hint and status == 401 and self.token_source:
            hint = f"the token from {self.token_source} was refused; {hint}"
        if hint:
            line += f"; {hint}"
        exit_code = STATUS_EXIT.get(status, FAILED)
        return OpsError(line, exit_code, status, code or None)


def _reason(reason: Any) -> str:
    """urllib's nested reasons as words: 'connection refused', 'name not known', 'certificate ...'."""
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is `edgefleet fleet serve` running there?)"
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({reason.verify_message})"
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror})"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason)
