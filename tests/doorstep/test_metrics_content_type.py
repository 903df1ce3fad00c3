"""Issue 11, seen 4: /metrics answered `text/plain; version=1.0.0; charset=utf-8; charset=utf-8`;
a repeated parameter is refused by strict parsers (Go's mime.ParseMediaType, used by Prometheus)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
QUOTED = r'"(?:[^"\\]|\\.)*"'


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """RFC 9110 media-type, as strictly as Go's mime.ParseMediaType: a type/subtype of tokens and
    `; name=value` parameters (token or quoted string); a repeated name (case-insensitive) is an error."""
    m = re.fullmatch(rf"\s*({TOKEN}/{TOKEN})\s*((?:;\s*{TOKEN}=(?:{TOKEN}|{QUOTED})\s*)*)", value)
    if not m:
        raise ValueError(f"malformed media type {value!r}")
    params: dict[str, str] = {}
    for name, val in re.findall(rf";\s*({TOKEN})=({TOKEN}|{QUOTED})", m.group(2)):
        if name.lower() in params:
            raise ValueError(f"duplicate parameter {name!r} in {value!r}")
        params[name.lower()] = val.strip('"')
    return m.group(1).lower(), params


def test_the_strict_parser_refuses_what_prometheus_refuses() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        parse_media_type("text/plain; version=1.0.0; charset=utf-8; charset=utf-8")
    with pytest.raises(ValueError, match="malformed"):
        parse_media_type("text/plain; charset")
    assert parse_media_type('text/plain; version=0.0.4; charset="utf-8"') == (
        "text/plain", {"version": "0.0.4", "charset": "utf-8"})


@pytest.mark.parametrize("accept, media", [
    (None, "text/plain"), ("text/plain;version=0.0.4;q=0.5,*/*;q=0.1", "text/plain"),
    ("application/openmetrics-text; version=1.0.0", "application/openmetrics-text")])
def test_metrics_content_type_is_one_valid_header(tmp_path: Path, accept: str | None, media: str) -> None:
    from fleet.app import create_app, fleet_context
    from fleet.settings import FleetSettings

    app = create_app(FleetSettings(data_dir=tmp_path, start_rollouts=False, start_ingest=False, drift_interval_s=0))
    try:
        resp = app.test_client().get("/metrics", headers={"Accept": accept} if accept else {})
        assert resp.status_code == 200
        values = resp.headers.getlist("Content-Type")
        assert len(values) == 1
        kind, params = parse_media_type(values[0])
        assert kind == media and params["charset"] == "utf-8" and "version" in params
        assert "edgefleet_http_request_seconds" in resp.get_data(as_text=True)
    finally:
        fleet_context(app).engine.dispose()
