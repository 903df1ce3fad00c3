"""One request-validation layer: every JSON body and query string is checked against a pydantic
model before the handler runs, and the same models are published in the OpenAPI document.

Why one layer: hostile input (integers beyond int64, `1e999`, NaN, JSON nested 100,000 deep,
wrong types, huge strings) must end as a 400 with a clear JSON error, never as a 500 from the
database driver or a RecursionError. The body is read bounded (the app's MAX_CONTENT_LENGTH,
413 beyond it), parsed without NaN/Infinity, checked for depth, then validated.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import g, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import BadRequest
from werkzeug.routing import IntegerConverter

from fleet.errors import ApiError

JSON_MAX_BYTES = 2 * 1024 * 1024  # the app-wide MAX_CONTENT_LENGTH; uploads raise it per request
MAX_DEPTH = 32                     # containers nested deeper than this are refused (400)
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1  # ids and versions are INTEGER columns (PostgreSQL: 32-bit)


class IdConverter(IntegerConverter):
    """`<int:...>` path parts (ids, versions: INTEGER columns, 32-bit on PostgreSQL): a larger
    one is a 400 naming the limit, instead of an overflow in SQLite/PostgreSQL (a 500)."""

    def to_python(self, value: str) -> int:
        number = int(value) if len(value) <= 20 else INT32_MAX + 1
        if number > INT32_MAX:
            # an HTTPException raised while routing becomes the request's answer (Flask routing_exception)
            raise BadRequest(f"path number {value[:24]} is beyond {INT32_MAX}")
        return number


@dataclass
class Operation:
    """What the OpenAPI document says about one view; attached as `view.api_operation`."""

    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    responses: dict[int, Any] = field(default_factory=lambda: {200: None})
    body_required: bool = True
    body_content: dict[str, Any] | None = None  # raw OpenAPI content (uploads), instead of `body`
    form: bool = False                           # the body may also come as form fields
    invalid: tuple[int, str] = (400, "invalid-request")  # status and code of a schema violation


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _int(text: str) -> int:
    if len(text) > 40:  # far beyond int64; refuse before int() spends time on a 1 MB digit string
        raise ValueError("integer is out of range")
    return int(text)


# NUL and lone surrogates: PostgreSQL refuses NUL in text and jsonb, and neither database driver
# can encode a lone surrogate ("\ud800" is valid JSON escape syntax but not UTF-8).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def check_text(text: str, where: str) -> None:
    if _UNSTORABLE.search(text):
        raise ApiError(400, "bad-request", f"{where} contains NUL or an unpaired surrogate")


def check_json(value: Any, limit: int = MAX_DEPTH) -> None:
    """Depth and storable strings, iteratively, so the check itself cannot recurse too deep."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            check_text(v, "a JSON string")
        elif isinstance(v, (dict, list)):
            if depth > limit:
                raise ApiError(400, "bad-request", f"JSON nested deeper than {limit} levels")
            if isinstance(v, dict):
                stack.extend((k, depth) for k in v)
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))


def check_url() -> None:
    """before_request: the same rule for the path and the query string of every request."""
    check_text(request.path, "the URL path")
    for key, value in request.args.items(multi=True):
        check_text(key, "a query parameter")
        check_text(value, f"query parameter {key[:40]!r}")


def loads(data: bytes | str) -> Any:
    """Strict JSON: no NaN/Infinity, no overflowing floats, bounded depth; errors are ApiError(400)."""
    try:
        value = json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_int)
    except RecursionError as exc:
        raise ApiError(400, "bad-request", f"JSON nested deeper than {MAX_DEPTH} levels") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad-request", f"invalid JSON body: {str(exc)[:200]}") from exc
    check_json(value)
    return value


def read_json(required: bool = True, form: bool = False) -> Any:
    """The request body as JSON (bounded by MAX_CONTENT_LENGTH: 413 beyond it). An empty body is
    `{}` when not required; `form=True` also takes form fields (the broker's auth hook)."""
    if form and request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        fields = request.form.to_dict()
        check_json(fields)
        return fields
    data = request.get_data(cache=True)
    if not data.strip():
        if required:
            raise ApiError(400, "bad-request", "expected a JSON object body")
        return {}
    return loads(data)


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_input=False)[:20]]


def _message(where: str, errs: list[dict[str, Any]]) -> str:
    first = errs[0] if errs else {"loc": "", "msg": "invalid"}
    loc = f"{where}.{first['loc']}" if first["loc"] else where
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{loc}: {first['msg']}{more}"


def validate_model(model: type[BaseModel], data: Any, where: str,
                   invalid: tuple[int, str] = (400, "invalid-request")) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errs = _errors(exc)
        raise ApiError(invalid[0], invalid[1], _message(where, errs), errs) from exc
    except RecursionError as exc:  # pragma: no cover - check_depth bounds nesting first
        raise ApiError(400, "bad-request", "input nested too deep") from exc


def query_dict(model: type[BaseModel]) -> dict[str, str]:
    """Known query parameters (first value each); unknown ones are ignored like most APIs do,
    except `attr.<key>` filters, which a model opts into with `extra = "allow"`."""
    known = set(model.model_fields)
    allow_extra = model.model_config.get("extra") == "allow"
    return {k: v for k, v in request.args.items() if k in known or (allow_extra and k.startswith("attr."))}


def api(*, body: type[BaseModel] | None = None, query: type[BaseModel] | None = None,
        responses: dict[int, Any] | None = None, body_required: bool = True,
        body_content: dict[str, Any] | None = None, form: bool = False,
        invalid: tuple[int, str] = (400, "invalid-request")) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator (below @require_role, so auth comes first): validates the query into `g.query`
    and the JSON body into `g.body` before the view runs, and records the operation for OpenAPI.
    A body that breaks its schema is `invalid` (400 invalid-request unless the operation's
    contract says otherwise, e.g. 422 invalid-spec for rollouts); malformed JSON is always 400."""
    op = Operation(body, query, responses or {200: None}, body_required, body_content, form, invalid)

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if query is not None:
                g.query = validate_model(query, query_dict(query), "query")
            if body is not None:
                g.body = validate_model(body, read_json(body_required, form), "body", invalid)
            return fn(*args, **kwargs)

        wrapper.api_operation = op  # type: ignore[attr-defined]
        return wrapper

    return deco


def body() -> Any:
    return g.body


def query() -> Any:
    return g.query


def offset_arg() -> int:
    """The console's `?offset=` (the API validates it with PageQuery): clamped to 0..int64 so a
    huge value cannot overflow the database's OFFSET."""
    return min(max(0, request.args.get("offset", 0, type=int) or 0), INT64_MAX)
