"""OpenAPI 3.1 document built from the registered routes: path parameters from the URL rules,
roles from @require_role, and request/response schemas from the pydantic models each view
declares with @api (fleet.api.validation) -- the same models the server validates with."""

from __future__ import annotations

import inspect
import re
from typing import Any

from flask import Blueprint, current_app, jsonify
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from fleet.api.responses import OpenApiDoc
from fleet.api.validation import INT32_MAX, Operation, api

bp = Blueprint("openapi", __name__)
_PARAM = re.compile(r"<(?:(int|float|path|string)(?:\([^)]*\))?:)?([a-zA-Z_]+)>")
REF = "#/components/schemas/{model}"
ERROR_SCHEMA = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "code": {"type": "string"}, "message": {"type": "string"}, "details": {}}, "required": ["code", "message"]}},
    "required": ["error"]}
_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_STATUS_TEXT = {200: "OK", 201: "Created", 206: "Partial content", 304: "Not modified", 403: "Denied"}
_ERRORS = {400: "Invalid request (the error names the field)", 401: "No or invalid token",
           403: "Role too low", 404: "Not found", 413: "Body too large", 415: "Unsupported media type",
           422: "The body breaks the operation's rules (the error names the field)"}


def _path_schema(kind: str | None, name: str) -> dict[str, Any]:
    if kind == "int":
        return {"type": "integer", "minimum": 0, "maximum": INT32_MAX}
    if name == "digest":
        return {"type": "string", "pattern": "^[0-9a-f]{64}$"}
    return {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[^/]+$"}


def _non_null(schema: dict[str, Any]) -> dict[str, Any]:
    """Optional query parameters are absent, never `null`: drop the null branch pydantic adds."""
    options = [s for s in schema.get("anyOf", []) if s.get("type") != "null"]
    if len(options) == 1:
        rest = {k: v for k, v in schema.items() if k != "anyOf" and not (k == "default" and v is None)}
        return {**options[0], **rest}
    return schema


def _query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema.get("properties", {}).items():
        prop = _non_null({k: v for k, v in prop.items() if k != "title"})
        p: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if "description" in prop:
            p["description"] = prop["description"]
        out.append(p)
    return out


def _operations(app: Any) -> list[tuple[Any, str, Any, Operation | None]]:
    out = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not (rule.rule.startswith("/api") or rule.rule.startswith("/artifacts") or rule.rule == "/metrics"):
            continue
        view = app.view_functions[rule.endpoint]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((rule, method, view, getattr(view, "api_operation", None)))
    return out


def _models(ops: list[tuple[Any, str, Any, Operation | None]]) -> list[tuple[type[BaseModel], str]]:
    seen: dict[tuple[type[BaseModel], str], None] = {}
    for _, _, _, op in ops:
        if op is None:
            continue
        if op.body is not None:
            seen[(op.body, "validation")] = None
        for model in op.responses.values():
            if isinstance(model, type) and issubclass(model, BaseModel):
                seen[(model, "serialization")] = None
    return list(seen)


def _response(status: int, spec: Any, refs: dict[Any, Any]) -> dict[str, Any]:
    desc = _STATUS_TEXT.get(status, "OK")
    if isinstance(spec, type) and issubclass(spec, BaseModel):
        return {"description": desc, "content": {"application/json": {"schema": refs[(spec, "serialization")]}}}
    if isinstance(spec, dict):  # raw OpenAPI response object (binary, text)
        return {"description": desc, **spec}
    return {"description": desc}


def build_spec(app: Any) -> dict[str, Any]:
    ops = _operations(app)
    refs, defs = models_json_schema(_models(ops), ref_template=REF)
    paths: dict[str, Any] = {}
    for rule, method, view, op in ops:
        path = _PARAM.sub(lambda m: "{" + m.group(2) + "}", rule.rule)
        params = [{"name": m.group(2), "in": "path", "required": True, "schema": _path_schema(m.group(1), m.group(2))}
                  for m in _PARAM.finditer(rule.rule)]
        role = getattr(view, "required_role", None)
        doc = inspect.cleandoc(view.__doc__ or "")
        operation: dict[str, Any] = {
            "operationId": f"{rule.endpoint}.{method.lower()}",
            "summary": doc.splitlines()[0] if doc else rule.endpoint.split(".")[-1].replace("_", " "),
            "description": doc + (f"\n\nRequires role: {role}." if role else "\n\nNo token needed."),
            "tags": [rule.endpoint.split(".")[0]],
            "parameters": params + (_query_params(op.query) if op and op.query else []),
            "responses": {},
        }
        responses = operation["responses"]
        for status, spec in (op.responses if op else {200: None}).items():
            responses[str(status)] = _response(status, spec, refs)
        errors = []
        if op and (op.query or op.body or op.body_content) or params:
            errors.append(400)
        if role:
            errors += [401, 403]
            operation["security"] = [{"bearer": []}, {"cookie": []}]
        if params:
            errors.append(404)
        if op and (op.body or op.body_content):
            errors.append(413)
        if op and op.body and op.invalid[0] != 400:
            errors.append(op.invalid[0])
        for status in errors:
            responses.setdefault(str(status), {"description": _ERRORS[status], **_ERROR})
        responses["default"] = {"description": "Error", **_ERROR}
        if op and op.body_content:
            operation["requestBody"] = {"required": True, "content": op.body_content}
        elif op and op.body:
            schema = refs[(op.body, "validation")]
            content = {"application/json": {"schema": schema}}
            if op.form:
                content["application/x-www-form-urlencoded"] = {"schema": schema}
            operation["requestBody"] = {"required": op.body_required, "content": content}
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "EdgeFleet fleet manager", "version": "1",
                 "description": "Registry, enrolment, model catalogue, telemetry, drift, alerts and rollouts. "
                                "Errors are JSON {error: {code, message, details}}; invalid input is a 400 that "
                                "names the field; lists are paginated with limit/offset and return "
                                "{items, total, limit, offset, next_offset}."},
        "components": {
            "schemas": {**defs.get("$defs", {}), "Error": ERROR_SCHEMA},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "cookie": {"type": "apiKey", "in": "cookie", "name": "session"}}},
        "paths": paths,
    }


@bp.get("/api/openapi.json")
@api(responses={200: OpenApiDoc})
def openapi():  # type: ignore[no-untyped-def]
    """The OpenAPI document of this API."""
    return jsonify(build_spec(current_app))
