"""The device-class catalogue: TOML files in `devices/`, validated when loaded.

A device class says what a family of devices can run (CPU, memory, format, precision,
runtime, execution providers, threads, how INT8 is quantized for its kernels) and the limits a
compiled model must fit.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from agent.toml_files import read_toml

ARCHES = ("x86_64", "aarch64", "armv7l")
FORMATS = ("onnx", "openvino", "tflite")
PRECISIONS = ("fp32", "fp16", "int8", "mixed", "auto")
RUNTIMES = ("onnxruntime", "openvino", "litert")
FORMAT_RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino", "tflite": "litert"}


class CatalogueError(Exception):
    """A device-class file is missing or breaks the schema; the message names file and field."""


@dataclass(frozen=True)
class DeviceClass:
    name: str
    description: str
    arch: str
    cpu_features: tuple[str, ...]
    memory_mb: int
    format: str
    precision: str
    runtime: str
    execution_providers: tuple[str, ...]
    threads: int
    max_model_bytes: int
    latency_budget_ms: float
    max_accuracy_drop: float
    max_slice_gap_increase: float
    detect_paths: tuple[str, ...] = ()
    priority: int = 0
    source: str = ""
    # 7-bit INT8 weights (ORT's reduce_range, NNCF's overflow fix on every layer): without VNNI (AVX2's
    # vpmaddubsw) u8*s8 pair sums saturate int16 at full range; VNNI (vpdpbusd) accumulates in int32.
    reduce_range: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description,
            "cpu": {"arch": self.arch, "features": list(self.cpu_features)},
            "memory": {"ram_mb": self.memory_mb},
            "model": {"format": self.format, "precision": self.precision, "runtime": self.runtime,
                      "execution_providers": list(self.execution_providers), "threads": self.threads,
                      "reduce_range": self.reduce_range},
            "limits": {"max_model_bytes": self.max_model_bytes, "latency_budget_ms": self.latency_budget_ms,
                       "max_accuracy_drop": self.max_accuracy_drop,
                       "max_slice_gap_increase": self.max_slice_gap_increase},
            "detect": {"paths": list(self.detect_paths), "priority": self.priority},
        }


# field path -> (type, required, allowed values or None)
_SCHEMA: dict[str, tuple[type | tuple[type, ...], bool, tuple[Any, ...] | None]] = {
    "name": (str, True, None),
    "description": (str, True, None),
    "cpu.arch": (str, True, ARCHES),
    "cpu.features": (list, True, None),
    "memory.ram_mb": (int, True, None),
    "model.format": (str, True, FORMATS),
    "model.precision": (str, True, PRECISIONS),
    "model.runtime": (str, True, RUNTIMES),
    "model.execution_providers": (list, False, None),
    "model.threads": (int, True, None),
    "model.reduce_range": (bool, False, None),
    "limits.max_model_bytes": (int, True, None),
    "limits.latency_budget_ms": ((int, float), True, None),
    "limits.max_accuracy_drop": ((int, float), False, None),
    "limits.max_slice_gap_increase": ((int, float), False, None),
    "detect.paths": (list, False, None),
    "detect.priority": (int, False, None),
}
_SECTIONS = {"cpu", "memory", "model", "limits", "detect"}


def _get(data: dict[str, Any], dotted: str) -> Any:
    cur: Any = data
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def parse_device_class(data: dict[str, Any], source: str) -> DeviceClass:
    """Validate one parsed TOML document against the schema."""
    unknown = set(data) - {"name", "description"} - _SECTIONS
    if unknown:
        raise CatalogueError(f"{source}: unknown field(s) {', '.join(sorted(unknown))}")
    for section in _SECTIONS:
        if section in data:
            known = {k.split(".", 1)[1] for k in _SCHEMA if k.startswith(section + ".")}
            extra = set(data[section]) - known
            if extra:
                raise CatalogueError(f"{source}: unknown field(s) {', '.join(f'{section}.{e}' for e in sorted(extra))}")
    for path, (typ, required, allowed) in _SCHEMA.items():
        value = _get(data, path)
        if value is None:
            if required:
                raise CatalogueError(f"{source}: missing required field '{path}'")
            continue
        if not isinstance(value, typ) or (isinstance(value, bool) and typ is not bool):
            name = "true or false" if typ is bool else getattr(typ, "__name__", typ)
            raise CatalogueError(f"{source}: field '{path}' must be {name}, got {value!r}")
        if allowed is not None and value not in allowed:
            raise CatalogueError(f"{source}: field '{path}' is {value!r}, expected one of {', '.join(allowed)}")
        if isinstance(value, (int, float)) and value < 0:
            raise CatalogueError(f"{source}: field '{path}' must not be negative")
    if data["model"]["runtime"] != FORMAT_RUNTIME[data["model"]["format"]]:
        raise CatalogueError(f"{source}: field 'model.runtime' must be {FORMAT_RUNTIME[data['model']['format']]!r}"
                             f" for format {data['model']['format']!r}")
    if data["model"]["threads"] < 1:
        raise CatalogueError(f"{source}: field 'model.threads' must be at least 1")
    limits = data["limits"]
    return DeviceClass(
        name=data["name"], description=data["description"], arch=data["cpu"]["arch"],
        cpu_features=tuple(str(f) for f in data["cpu"]["features"]), memory_mb=data["memory"]["ram_mb"],
        format=data["model"]["format"], precision=data["model"]["precision"], runtime=data["model"]["runtime"],
        execution_providers=tuple(data["model"].get("execution_providers", ())),
        threads=data["model"]["threads"], reduce_range=bool(data["model"].get("reduce_range", False)),
        max_model_bytes=limits["max_model_bytes"],
        latency_budget_ms=float(limits["latency_budget_ms"]),
        max_accuracy_drop=float(limits.get("max_accuracy_drop", 0.01)),
        max_slice_gap_increase=float(limits.get("max_slice_gap_increase", 0.02)),
        detect_paths=tuple(_get(data, "detect.paths") or ()), priority=int(_get(data, "detect.priority") or 0),
        source=source,
    )


def load_device_class_file(path: Path) -> DeviceClass:
    data = read_toml(path, CatalogueError, "device class file")
    dc = parse_device_class(data, str(path))
    if Path(path).stem != dc.name:
        raise CatalogueError(f"{path}: field 'name' is {dc.name!r} but the file is named {Path(path).stem!r}")
    return dc


def catalogue_dir() -> Path:
    """EDGEFLEET_DEVICES overrides the packaged catalogue."""
    env = os.environ.get("EDGEFLEET_DEVICES")
    if env:
        return Path(env)
    return Path(str(resources.files("devices")))


def load_catalogue(directory: Path | None = None) -> dict[str, DeviceClass]:
    directory = Path(directory) if directory else catalogue_dir()
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise CatalogueError(f"{directory}: no device-class files (*.toml)")
    return {dc.name: dc for dc in (load_device_class_file(f) for f in files)}


def get_device_class(name: str, directory: Path | None = None) -> DeviceClass:
    cat = load_catalogue(directory)
    if name not in cat:
        raise CatalogueError(f"unknown device class {name!r}; known: {', '.join(sorted(cat))}")
    return cat[name]


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def detect_device_class(catalogue: dict[str, DeviceClass] | None = None, *, arch: str | None = None,
                        flags: set[str] | None = None, memory_mb: int | None = None,
                        exists: Any = os.path.exists) -> DeviceClass:
    """The most specific class whose arch, CPU features, memory and marker files this machine has."""
    catalogue = catalogue or load_catalogue()
    arch = arch or platform.machine()
    flags = cpu_flags() if flags is None else flags
    if memory_mb is None:
        import psutil

        memory_mb = int(psutil.virtual_memory().total / 2**20)
    fits = [
        dc for dc in catalogue.values()
        if dc.arch == arch and set(dc.cpu_features) <= flags and dc.memory_mb <= memory_mb
        and all(exists(p) for p in dc.detect_paths)
    ]
    if not fits:
        raise CatalogueError(f"no device class fits this machine (arch {arch}, {memory_mb} MB)")
    return max(fits, key=lambda dc: (dc.priority, len(dc.cpu_features), dc.memory_mb))
