"""The rollout spec `edgefleet rollout create` sends: read from a TOML or JSON file (the same
document POST /api/rollouts takes, docs/fleet.md), built from flags for the common case, or both
(flags override the file). The fleet validates it; here only what the CLI itself parses."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.toml_files import read_toml
from edgefleet.ops.client import BAD_INPUT, OpsError

DEFAULT_WAVES = "1,10,50,100"


class SpecInputError(OpsError):
    def __init__(self, message: str) -> None:
        super().__init__(message, BAD_INPUT)


@dataclass
class SpecFlags:
    model: str | None = None
    version: int | None = None
    name: str | None = None
    fleet: str | None = None
    device_classes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    attrs: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    waves: str | None = None
    gates: tuple[str, ...] = ()
    require_approval: bool = False
    shadow_first: bool = False


def read_spec_file(path: Path) -> dict[str, Any]:
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise SpecInputError(f"cannot read spec {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise SpecInputError(f"spec {path} is not valid JSON: {exc}") from None
    else:
        data = read_toml(path, SpecInputError, "spec")
    if not isinstance(data, dict):
        raise SpecInputError(f"spec {path} must be a JSON object / TOML table")
    return data


def _scalar(text: str) -> Any:
    """A flag value as the JSON scalar it spells (0.2, 300, true), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pairs(items: tuple[str, ...], flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecInputError(f"{flag} takes KEY=VALUE, got {item!r}")
        out[key.strip()] = _scalar(value.strip())
    return out


def parse_waves(text: str, shadow_first: bool = False) -> list[dict[str, Any]]:
    """'1,10,50,100' -> cumulative percent waves named wave-1 ... (1-based, as the console shows);
    a value ending in 'd' is a device count ('2d,100' = 2 devices, then everyone)."""
    waves: list[dict[str, Any]] = []
    for i, part in enumerate(p.strip() for p in text.split(",")):
        if not part:
            raise SpecInputError(f"--waves: empty entry in {text!r}")
        try:
            if part.endswith("d"):
                size: dict[str, Any] = {"count": int(part[:-1])}
            else:
                size = {"percent": float(part.rstrip("%"))}
        except ValueError:
            raise SpecInputError(f"--waves: {part!r} is neither a percent (10) nor a device count (5d)") from None
        waves.append({"name": f"wave-{i + 1}", **size})
    if shadow_first and waves:
        waves[0]["mode"] = "shadow"
    return waves


def build_spec(file: Path | None, f: SpecFlags) -> dict[str, Any]:
    """The file's spec with the given flags laid over it (target and gates merge key by key)."""
    spec = read_spec_file(file) if file else {}
    if f.model:
        spec["model_name"] = f.model
    if f.version is not None:
        spec["version"] = f.version
    if f.name:
        spec["name"] = f.name
    target = dict(spec.get("target") or {})
    for key, value in (("fleet", f.fleet), ("device_classes", list(f.device_classes)), ("tags", list(f.tags)),
                       ("attributes", _pairs(f.attrs, "--attr")), ("device_ids", list(f.devices))):
        if value:
            target[key] = value
    if target:
        spec["target"] = target
    gates = {**dict(spec.get("gates") or {}), **_pairs(f.gates, "--gate")}
    if f.require_approval:
        gates["require_approval"] = True
    if gates:
        spec["gates"] = gates
    if f.waves or not spec.get("waves"):
        spec["waves"] = parse_waves(f.waves or DEFAULT_WAVES, f.shadow_first)
    elif f.shadow_first:
        spec["waves"][0] = {**spec["waves"][0], "mode": "shadow"}
    missing = [flag for key, flag in (("model_name", "--model"), ("version", "--version")) if key not in spec]
    if missing:
        raise SpecInputError(f"a rollout needs a model and a version: give {' and '.join(missing)} "
                             "(or a spec file that has them)")
    return spec
