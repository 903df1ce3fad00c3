"""The local server's compact binary payload for numpy arrays.

message = b"EFT1" | u32 little-endian header length | header (UTF-8 JSON) | raw buffers
header  = {"tensors": [{"name", "dtype", "shape"}, ...], ...any other fields}
Buffers follow in header order, C-contiguous, little-endian, no padding. On a Unix socket each
message is preceded by its u32 total length.

Hot path: an app sends the same names, dtypes and shapes request after request, so both
directions keep a small cache of header text <-> parsed tensor layout (bounded, keyed by the
exact bytes or the exact layout) and skip JSON on a hit. `encode_parts` gives the header and
the arrays' own buffers for scatter/gather sends, so large tensors are never copied into one
message in user space.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

MAGIC = b"EFT1"
CONTENT_TYPE = "application/x-edgefleet-tensors"
_ALLOWED = {"float16", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
            "uint64", "bool"}
_DTYPES = {name: np.dtype(name).newbyteorder("<") for name in _ALLOWED}
_NAMES = {dt: name for name, dt in _DTYPES.items()}  # (dtype.name costs microseconds)
_COPY_BELOW = 1 << 16  # small buffers: a copy is cheaper than a memoryview
_SCALARS = (bool, int, str, type(None))
_CACHE_MAX = 256  # entries per direction
_CACHE_HEADER_MAX = 4096  # bytes; longer headers are parsed every time
_U32 = struct.Struct("<I")
# header bytes -> ([(name, dtype, shape, nbytes)], other fields); only headers whose other fields are scalars
_decode_cache: dict[bytes, tuple[list[tuple[str, np.dtype, tuple[int, ...], int]], dict[str, Any]]] = {}
# (layout, fields) -> MAGIC + u32 + header
_encode_cache: dict[tuple[Any, ...], bytes] = {}


class WireError(ValueError):
    """A binary message is malformed."""


def _prefix(layout: tuple[tuple[str, str, tuple[int, ...]], ...], fields: Mapping[str, Any]) -> bytes:
    key: tuple[Any, ...] | None = None
    if all(v.__class__ in _SCALARS for v in fields.values()):  # True and 1 must not share an entry
        key = (layout, *((k, v.__class__, v) for k, v in fields.items()))
        hit = _encode_cache.get(key)
        if hit is not None:
            return hit
    tensors = [{"name": n, "dtype": dt, "shape": list(shape)} for n, dt, shape in layout]
    header = json.dumps({**fields, "tensors": tensors}, separators=(",", ":")).encode()
    out = MAGIC + _U32.pack(len(header)) + header
    if key is not None and len(header) <= _CACHE_HEADER_MAX:
        if len(_encode_cache) >= _CACHE_MAX:
            _encode_cache.clear()
        _encode_cache[key] = out
    return out


def encode_parts(arrays: Mapping[str, np.ndarray], **fields: Any) -> list[bytes | memoryview]:
    """The message as [MAGIC + header, buffer, ...]: b"".join(parts) == encode(...). The buffers
    are views of the arrays (no copy) unless an array had to be made contiguous or little-endian."""
    layout, bufs = [], []
    for name, a in arrays.items():
        if a.__class__ is not np.ndarray:
            a = np.asarray(a)
        if not a.flags.c_contiguous:
            a = a.copy(order="C")  # (np.ascontiguousarray would turn 0-d arrays into 1-d)
        dt = a.dtype
        if dt.byteorder == ">":
            dt = dt.newbyteorder("<")
            a = a.astype(dt)
        dname = _NAMES.get(dt)
        if dname is None:  # (an output, not the caller's input: not a WireError)
            raise TypeError(f"tensor {name!r} has dtype {dt.name!r}, which the wire format cannot carry")
        layout.append((name, dname, a.shape))
        nbytes = a.nbytes
        if nbytes:
            bufs.append(a.tobytes() if nbytes < _COPY_BELOW else a.data.cast("B"))
    return [_prefix(tuple(layout), fields), *bufs]


def encode(arrays: Mapping[str, np.ndarray], **fields: Any) -> bytes:
    return b"".join(encode_parts(arrays, **fields))


def _parse_header(raw: bytes) -> tuple[list[tuple[str, np.dtype, tuple[int, ...], int]], dict[str, Any], bool]:
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise WireError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), list):
        raise WireError("header lacks 'tensors'")
    specs = []
    for t in header.pop("tensors"):
        try:
            name, dtype, shape = str(t["name"]), str(t["dtype"]), tuple(int(s) for s in t["shape"])
        except (KeyError, TypeError, ValueError):
            raise WireError("tensor entry needs name, dtype and shape") from None
        dt = _DTYPES.get(dtype)
        if dt is None or any(s < 0 for s in shape):
            raise WireError(f"tensor {name!r}: unsupported dtype {dtype!r} or negative shape")
        n = dt.itemsize
        for s in shape:
            n *= s
        specs.append((name, dt, shape, n))
    return specs, header, all(v.__class__ in _SCALARS for v in header.values())


def decode(data: bytes | bytearray | memoryview) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, other header fields). Arrays are read-only views into `data`."""
    mv = memoryview(data)
    if mv.readonly is False:
        mv = mv.toreadonly()
    size = mv.nbytes
    if size < 8 or mv[:4] != MAGIC:
        raise WireError("not an EFT1 tensor message")
    (hlen,) = _U32.unpack_from(mv, 4)
    off = 8 + hlen
    if off > size:
        raise WireError("header length exceeds the message")
    raw = mv[8:off].tobytes()
    hit = _decode_cache.get(raw)
    if hit is not None:
        specs, fields = hit
        header = dict(fields)
    else:
        specs, header, cacheable = _parse_header(raw)
        if cacheable and hlen <= _CACHE_HEADER_MAX:
            if len(_decode_cache) >= _CACHE_MAX:
                _decode_cache.clear()
            _decode_cache[raw] = (specs, dict(header))
    out: dict[str, np.ndarray] = {}
    for name, dt, shape, n in specs:
        if off + n > size:
            raise WireError(f"tensor {name!r} is truncated")
        out[name] = np.frombuffer(mv[off:off + n], dtype=dt).reshape(shape)
        off += n
    if off != size:
        raise WireError("trailing bytes after the last tensor")
    return out, header
