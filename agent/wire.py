"""The local server's compact binary payload for numpy arrays.

message = b"EFT1" | u32 little-endian header length | header (UTF-8 JSON) | raw buffers
header  = {"tensors": [{"name", "dtype", "shape"}, ...], ...any other fields}
Buffers follow in header order, C-contiguous, little-endian, no padding. On a Unix socket each
message is preceded by its u32 total length.
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


class WireError(ValueError):
    """A binary message is malformed."""


def encode(arrays: Mapping[str, np.ndarray], **fields: Any) -> bytes:
    tensors, bufs = [], []
    for name, a in arrays.items():
        a = np.asarray(a)
        if not a.flags.c_contiguous:
            a = a.copy(order="C")  # (np.ascontiguousarray would turn 0-d arrays into 1-d)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        tensors.append({"name": name, "dtype": a.dtype.name, "shape": list(a.shape)})
        bufs.append(a.tobytes())
    header = json.dumps({**fields, "tensors": tensors}, separators=(",", ":")).encode()
    return b"".join([MAGIC, struct.pack("<I", len(header)), header, *bufs])


def decode(data: bytes | memoryview) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, other header fields). Arrays are read-only views into `data`."""
    mv = memoryview(data)
    if len(mv) < 8 or bytes(mv[:4]) != MAGIC:
        raise WireError("not an EFT1 tensor message")
    (hlen,) = struct.unpack_from("<I", mv, 4)
    if 8 + hlen > len(mv):
        raise WireError("header length exceeds the message")
    try:
        header = json.loads(bytes(mv[8:8 + hlen]))
    except ValueError as exc:
        raise WireError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), list):
        raise WireError("header lacks 'tensors'")
    off = 8 + hlen
    out: dict[str, np.ndarray] = {}
    for t in header.pop("tensors"):
        try:
            name, dtype, shape = str(t["name"]), str(t["dtype"]), [int(s) for s in t["shape"]]
        except (KeyError, TypeError, ValueError):
            raise WireError("tensor entry needs name, dtype and shape") from None
        if dtype not in _ALLOWED or any(s < 0 for s in shape):
            raise WireError(f"tensor {name!r}: unsupported dtype {dtype!r} or negative shape")
        dt = np.dtype(dtype).newbyteorder("<")
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if off + n > len(mv):
            raise WireError(f"tensor {name!r} is truncated")
        out[name] = np.frombuffer(mv[off:off + n], dtype=dt).reshape(shape)
        off += n
    if off != len(mv):
        raise WireError("trailing bytes after the last tensor")
    return out, header
