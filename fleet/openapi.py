"""OpenAPI 3.1 document built from the registered routes (docstrings, roles, path parameters)."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, current_app, jsonify

bp = Blueprint("openapi", __name__)
_PARAM = re.compile(r"<(?:(int|float|path|string):)?([a-zA-Z_]+)>")
ERROR_SCHEMA = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "code": {"type": "string"}, "message": {"type": "string"}, "details": {}}, "required": ["code", "message"]}}}
PAGE_PARAMS = [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
               {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}}]


def build_spec(app: Any) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not (rule.rule.startswith("/api") or rule.rule.startswith("/artifacts") or rule.rule == "/metrics"):
            continue
        view = app.view_functions[rule.endpoint]
        path = _PARAM.sub(lambda m: "{" + m.group(2) + "}", rule.rule)
        params = [{"name": m.group(2), "in": "path", "required": True,
                   "schema": {"type": "integer" if m.group(1) == "int" else "string"}}
                  for m in _PARAM.finditer(rule.rule)]
        role = getattr(view, "required_role", None)
        doc = (view.__doc__ or "").strip()
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            op: dict[str, Any] = {
                "operationId": f"{rule.endpoint}.{method.lower()}",
                "summary": doc.splitlines()[0] if doc else rule.endpoint.replace("_", " "),
                "description": doc + (f"\n\nRequires role: {role}." if role else "\n\nNo token needed."),
                "tags": [rule.endpoint.split(".")[0]],
                "parameters": params + (PAGE_PARAMS if method == "GET" and rule.rule in _PAGINATED else []),
                "responses": {"200": {"description": "OK", "content": {"application/json": {}}},
                              "default": {"description": "Error",
                                          "content": {"application/json": {"schema": ERROR_SCHEMA}}}},
            }
            if role:
                op["security"] = [{"bearer": []}, {"cookie": []}]
                op["responses"]["401"] = {"description": "No or invalid token"}
                op["responses"]["403"] = {"description": f"Role below {role}"}
            if method in ("POST", "PATCH", "PUT"):
                op["requestBody"] = {"required": False, "content": {"application/json": {"schema": {"type": "object"}}}}
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "EdgeFleet fleet manager", "version": "1",
                 "description": "Registry, enrolment, model catalogue, telemetry, drift and alerts. Errors are "
                                "JSON {error: {code, message}}; lists are paginated with limit/offset and return "
                                "{items, total, limit, offset, next_offset}."},
        "components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "cookie": {"type": "apiKey", "in": "cookie", "name": "session"}}},
        "paths": paths,
    }


_PAGINATED = {"/api/devices", "/api/devices/<device_id>/events", "/api/devices/<device_id>/telemetry",
              "/api/models/<name>/versions", "/api/aggregates", "/api/alerts", "/api/audit"}


@bp.get("/api/openapi.json")
def openapi():  # type: ignore[no-untyped-def]
    """The OpenAPI document of this API."""
    return jsonify(build_spec(current_app))
