"""What a manifest may say: structure, names, tensor specs, and that the model file is what the
manifest claims. Shared by bundle build, verify and install, so a bad manifest is refused before
any payload byte is unpacked (and a format that does not match the file's magic before load).

Each refusal is a ManifestRefused(reason, message); agent.bundle turns it into a BundleError.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeGuard

from agent.names import InvalidName, validate_name

SCHEMA = "edgefleet.bundle/v1"
FORMATS = ("onnx", "openvino", "tflite")
PRECISIONS = ("fp32", "fp16", "int8", "mixed")
DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
          "uint64", "bool")
MAX_RANK = 16
MAX_DIM = 2**31 - 1
MAX_FIXED_ELEMENTS = 2**31  # fixed dims of one tensor: more is no model an edge device can run
MAX_TENSORS = 256
MAX_FILES = 256
MAX_JSON_DEPTH = 32
MAX_VERSION = 2**53  # a JSON number every reader (and the fleet's database) holds exactly


class ManifestRefused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def parse_json_bounded(data: bytes, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads with a nesting limit that holds before and after parsing (no RecursionError)."""
    try:
        doc = json.loads(data)
    except RecursionError:
        raise ManifestRefused("malformed", f"{what} is nested deeper than {max_depth} levels") from None
    except (ValueError, UnicodeError) as exc:
        raise ManifestRefused("malformed", f"{what} is not JSON: {exc}") from None
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise ManifestRefused("malformed", f"{what} is nested deeper than {max_depth} levels")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return doc


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def check_tensor_specs(specs: Any, key: str) -> None:
    """Every dim a positive int within bounds or a symbolic name; every dtype a known one."""
    if not isinstance(specs, list):
        raise ManifestRefused("malformed", f"{key} must be a list of tensor specs")
    if len(specs) > MAX_TENSORS:
        raise ManifestRefused("bad-tensor-spec", f"{key} lists {len(specs)} tensors, at most {MAX_TENSORS}")
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise ManifestRefused("bad-tensor-spec", f"{key}[{i}] must be an object")
        name = spec.get("name")
        if not isinstance(name, str) or not name or len(name) > 256:
            raise ManifestRefused("bad-tensor-spec", f"{key}[{i}].name must be a string of 1-256 characters")
        where = f"{key} {name[:40]!r}"
        if spec.get("dtype", "float32") not in DTYPES:
            raise ManifestRefused("bad-tensor-spec", f"{where}: dtype {str(spec.get('dtype'))[:40]!r} is unknown;"
                                                     f" known: {', '.join(DTYPES)}")
        shape = spec.get("shape", [])
        if not isinstance(shape, list) or len(shape) > MAX_RANK:
            raise ManifestRefused("bad-tensor-spec", f"{where}: shape must be a list of at most {MAX_RANK} dims")
        fixed = 1
        for axis, dim in enumerate(shape):
            if _is_int(dim):
                if not 1 <= dim <= MAX_DIM:
                    raise ManifestRefused("bad-tensor-spec", f"{where}: dimension {axis} is {dim}; fixed dims"
                                                             f" must be 1..{MAX_DIM}")
                fixed *= dim
            elif isinstance(dim, str) and 0 < len(dim) <= 64 and dim.isprintable() and not dim.lstrip("-").isdigit():
                continue
            elif isinstance(dim, str) and dim.isdigit() and 1 <= int(dim) <= MAX_DIM:
                fixed *= int(dim)
            else:
                raise ManifestRefused("bad-tensor-spec", f"{where}: dimension {axis} is {str(dim)[:40]!r}; expected"
                                                         " a positive integer or a symbolic name")
        if fixed > MAX_FIXED_ELEMENTS:
            raise ManifestRefused("bad-tensor-spec", f"{where}: fixed dims hold {fixed} elements, at most"
                                                     f" {MAX_FIXED_ELEMENTS}")
        batch_axis = spec.get("batch_axis")
        if batch_axis is not None and not (_is_int(batch_axis) and 0 <= batch_axis < max(1, len(shape))):
            raise ManifestRefused("bad-tensor-spec", f"{where}: batch_axis {batch_axis!r} is not an axis of the shape")


def check_manifest(manifest: Mapping[str, Any], safe_member_path: Any) -> None:
    """Structural checks shared by build and verify. `safe_member_path` raises on a bad file path."""
    if not isinstance(manifest, Mapping):
        raise ManifestRefused("malformed", "manifest must be a JSON object")
    if manifest.get("schema") != SCHEMA:
        raise ManifestRefused("malformed", f"schema must be {SCHEMA!r}")
    model = manifest.get("model")
    if not isinstance(model, Mapping):
        raise ManifestRefused("malformed", "model must be an object")
    try:
        validate_name("model name", model.get("name"))
        validate_name("device class", model.get("device_class"))
    except InvalidName as exc:
        raise ManifestRefused("bad-name", f"model.{'name' if 'model name' in str(exc) else 'device_class'}: {exc}"
                              ) from None
    version = model.get("version")
    if not _is_int(version) or not 0 <= version <= MAX_VERSION:
        raise ManifestRefused("malformed", f"model.version must be an integer 0..{MAX_VERSION}")
    if model.get("format") not in FORMATS:
        raise ManifestRefused("malformed", f"model.format must be one of {FORMATS}")
    if model.get("precision") not in PRECISIONS:
        raise ManifestRefused("malformed", f"model.precision must be one of {PRECISIONS}")
    files = manifest.get("files")
    if not isinstance(files, list) or not files or len(files) > MAX_FILES:
        raise ManifestRefused("malformed", f"files must be a list of 1..{MAX_FILES} entries")
    seen: set[str] = set()
    for entry in files:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("path"), str):
            raise ManifestRefused("malformed", "each files entry must be an object with a path")
        path = safe_member_path(entry["path"])
        if path in seen:
            raise ManifestRefused("malformed", f"file {path!r} listed twice")
        seen.add(path)
        if not _is_int(entry.get("size")) or not 0 <= entry["size"] <= MAX_VERSION:
            raise ManifestRefused("malformed", f"file {path!r} has a bad size")
        sha = entry.get("sha256")
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ManifestRefused("malformed", f"file {path!r} has a bad sha256")
    if manifest.get("entrypoint") not in seen:
        raise ManifestRefused("malformed", "entrypoint must name one of the files")
    for key in ("inputs", "outputs"):
        check_tensor_specs(manifest.get(key), key)


def check_device_class(manifest: Mapping[str, Any], device_class: str) -> None:
    built_for = manifest["model"]["device_class"]
    if built_for != device_class:
        raise ManifestRefused("wrong-device-class", f"bundle is built for device class {built_for!r}, this device"
                                                    f" is {device_class!r}")


def _looks_like_onnx(head: bytes) -> bool:
    # A serialized ModelProto starts with a protobuf tag: field 1..20, wire type varint (0) or bytes (2).
    if not head:
        return False
    field, wire = head[0] >> 3, head[0] & 7
    return 1 <= field <= 20 and wire in (0, 2) and not _looks_like_xml(head) and not _looks_like_tflite(head)


def _looks_like_xml(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    return text.startswith((b"<?xml", b"<net"))


def _looks_like_tflite(head: bytes) -> bool:
    return len(head) >= 8 and head[4:8] == b"TFL3"


MAGIC = {"onnx": (_looks_like_onnx, "an ONNX protobuf"),
         "openvino": (_looks_like_xml, "an OpenVINO IR .xml"),
         "tflite": (_looks_like_tflite, "a TFLite flatbuffer (TFL3)")}


def check_format_magic(fmt: str, entrypoint: Path) -> None:
    """The entrypoint's first bytes must be the format the manifest names (checked before load)."""
    check, what = MAGIC[fmt]
    with open(entrypoint, "rb") as fh:
        head = fh.read(64)
    if not check(head):
        found = next((f for f, (c, _) in MAGIC.items() if f != fmt and c(head)), None)
        raise ManifestRefused("format-mismatch", f"manifest says {fmt} but {entrypoint.name} is not {what}"
                              + (f" (it looks like {found})" if found else ""))
