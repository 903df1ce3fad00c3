"""A small REST client for the fleet manager's API (standard library only), used by the demo.

The demo drives the fleet the way an operator or a CI job would: over HTTP with a bearer token.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ApiCallError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclass
class FleetClient:
    url: str
    token: str
    timeout_s: float = 30.0

    def _call(self, method: str, path: str, data: bytes | None, content_type: str) -> Any:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(self.url.rstrip("/") + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            raise ApiCallError(exc.code, exc.read().decode(errors="replace")[:500]) from None
        return json.loads(body) if body else None

    def get(self, path: str) -> Any:
        return self._call("GET", path, None, "")

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._call("POST", path, json.dumps(body or {}).encode(), "application/json")

    def upload_bundle(self, path: Path) -> Any:
        return self._call("POST", "/api/models", Path(path).read_bytes(), "application/octet-stream")
