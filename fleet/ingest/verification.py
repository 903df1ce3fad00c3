"""Checks on device messages: the signed envelope (fast path over the bytes as received) and the
telemetry payload's shape, down to every histogram count that aggregation will add up."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from typing import Any, TypedDict

import msgspec
from cryptography.exceptions import InvalidSignature

from agent.canonical import canonical_json
from agent.keys import Keyring
from agent.protocol import ProtocolError, verify_signed
from agent.window_schema import MAX_COUNT, WireCounts, check_wire, decode_wire
from fleet.db import RawJSON
from fleet.ingest import fastjson

MAX_INT = MAX_COUNT  # the largest count or seq accepted (the one check, agent.window_schema)


def check_telemetry(p: Mapping[str, Any]) -> WireCounts:
    """The one shape check (agent.window_schema) with the seq ingest keys windows by, on a payload
    decoded as part of a whole envelope; returns the histograms flattened for merge_many."""
    try:
        return check_wire(p, require_seq=True)
    except ValueError as exc:
        raise ProtocolError("malformed", str(exc)) from None


def decode_telemetry(body: bytes) -> tuple[dict[str, Any], WireCounts]:
    """A telemetry payload's signed bytes decoded and shape-checked in one pass (the same check)."""
    try:
        return decode_wire(body, require_seq=True)
    except ValueError as exc:
        raise ProtocolError("malformed", str(exc)) from None


def decode_plain(body: bytes) -> tuple[dict[str, Any], None]:
    """Any other signed payload: decoded only (the kind's checks follow in the caller)."""
    return fastjson.decode(body), None


_PREFIX, _MARK = b'{"payload":', b',"signature":'


_SAFE = re.compile(r"^[A-Za-z0-9+/=_.-]*$")


def _canonical_sig(sig: dict[str, Any]) -> bytes:
    """canonical_json(sig) + b"}" for the usual {alg, key_id, sig} object, without json.dumps."""
    if set(sig) == {"alg", "key_id", "sig"} and all(isinstance(v, str) and _SAFE.match(v) for v in sig.values()):
        return f'{{"alg":"{sig["alg"]}","key_id":"{sig["key_id"]}","sig":"{sig["sig"]}"}}}}'.encode()
    return canonical_json(sig) + b"}"


def fast_verify(raw: bytes, doc: dict[str, Any], keyring: Keyring) -> dict[str, Any]:
    """Verify a signed envelope; when the message is the canonical envelope (what agents send),
    check the signature over the payload bytes as received instead of re-encoding them, and keep
    those bytes (RawJSON) so storing costs no second serialisation. Anything else takes the
    general path (agent.protocol.verify_signed)."""
    sig = doc.get("signature")
    if raw.startswith(_PREFIX) and isinstance(sig, dict) and isinstance(doc.get("payload"), dict):
        i = raw.rfind(_MARK)
        # The tail must be exactly the canonical signature object: then the envelope has just
        # the two keys and the parsed payload is the one whose bytes we verify below.
        if i > 0 and raw[i + len(_MARK):] == _canonical_sig(sig) and sig.get("alg") == "Ed25519":
            key = keyring.keys.get(sig.get("key_id"))  # type: ignore[arg-type]
            if key is None:
                raise ProtocolError("bad-signature", "unknown key id")
            body = raw[len(_PREFIX):i]
            try:
                key.verify(base64.b64decode(str(sig.get("sig", "")), validate=True), body)
            except (InvalidSignature, ValueError):
                pass  # maybe signed over a different encoding: the general path decides
            else:
                return RawJSON(doc["payload"], body.decode())
    return verify_signed(doc, keyring)


class _Signature(TypedDict):
    alg: str
    key_id: str
    sig: str


_SIGNATURE = msgspec.json.Decoder(_Signature)  # a quarter of a general decode's cost; any other shape: None


def open_signed(raw: bytes, keyring: Keyring, verify: bool,
                decode: Callable[[bytes], tuple[dict[str, Any], Any]] = decode_plain) -> tuple[RawJSON, Any] | None:
    """The payload of a canonical envelope `{"payload":P,"signature":S}` (what agents send), decoded
    by `decode` (plain JSON, or decode_telemetry: decoded and checked) from exactly the bytes P that
    the signature covers, kept as RawJSON, with what `decode` returned beside it; with `verify` the
    signature over those bytes is checked, else only that it names one of the device's keys.
    When P and S both parse, the envelope holds just these two keys. None for anything else
    (another layout, bytes that do not verify, a payload `decode` refuses): the general path
    decides and reports."""
    if not (raw.startswith(_PREFIX) and raw.endswith(b"}")):
        return None
    i = raw.rfind(_MARK)
    if i < 0:
        return None
    body = raw[len(_PREFIX):i]
    try:
        (payload, view), sig = decode(body), _SIGNATURE.decode(raw[i + len(_MARK):-1])
    except (ProtocolError, msgspec.MsgspecError):
        return None
    key = keyring.keys.get(sig["key_id"])
    if not verify:
        if key is None:
            raise ProtocolError("bad-signature", "unknown key id")
        return RawJSON(payload, body.decode()), view
    if key is None or sig["alg"] != "Ed25519":
        return None
    try:
        key.verify(base64.b64decode(sig["sig"], validate=True), body)
    except (InvalidSignature, ValueError):
        return None  # maybe signed over a different encoding: the general path decides
    return RawJSON(payload, body.decode()), view


def trusted_payload(raw: bytes, doc: dict[str, Any], keyring: Keyring) -> dict[str, Any]:
    """The payload of a signed envelope whose signature is NOT checked (ingest trust mode,
    fleet.ingest.trust): the envelope must still name one of the device's keys, and the
    canonical envelope keeps its payload bytes (RawJSON) as fast_verify does."""
    sig, payload = doc.get("signature"), doc.get("payload")
    if not isinstance(sig, dict) or not isinstance(payload, dict) or set(doc) != {"payload", "signature"}:
        raise ProtocolError("malformed", "not a signed envelope")
    if sig.get("key_id") not in keyring.keys:
        raise ProtocolError("bad-signature", "unknown key id")
    if raw.startswith(_PREFIX):
        i = raw.rfind(_MARK)
        if i > 0 and raw[i + len(_MARK):] == _canonical_sig(sig):
            return RawJSON(payload, raw[len(_PREFIX):i].decode())
    return payload
