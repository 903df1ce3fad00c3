"""The pass core: a candidate Artifact, the PassContext passes read, and PassConfig, the frozen
config that is at once a pass's lineage record and its cache key.

Olive's idea without its branches: a pass is a frozen config plus the function that applies it.
The lineage entry's `config` is the config's own fields and the key hashes the same fields, so
neither can forget a setting. What each output format builds (and with which passes) is a plugin
in `compiler.formats`; `build_artifact` looks the format up there.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from agent.canonical import file_sha256
from compiler.architecture import Architecture
from compiler.data import Dataset
from compiler.provenance import json_sha256

# Precision names -> the manifest's precision word (dynamic INT8 is an INT8 model to a device).
MANIFEST_PRECISION = {"int8": "int8", "dynamic-int8": "int8", "fp16": "fp16", "fp32": "fp32", "mixed": "mixed"}


def jsonable(value: Any) -> Any:
    """A config value as the lineage (and the key) writes it: tuples as lists, objects by to_dict."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(value.to_dict() if hasattr(value, "to_dict") else dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def config_fields(config: Any) -> dict[str, Any]:
    """Every field of a config dataclass, JSON-ready, in declaration order."""
    return {f.name: jsonable(getattr(config, f.name)) for f in dataclasses.fields(config)}


def lineage_record(name: str, config: dict[str, Any], src: Path | str | None, out: Path | str | None,
                   **extra: Any) -> dict[str, Any]:
    """One lineage entry: the pass, its config, the hash of what went in and of what came out.
    A str stands for a hash already known ("torch:<sha>"); None for nothing written."""
    def sha(x: Path | str | None) -> str | None:
        return file_sha256(x) if isinstance(x, Path) else x

    return {"pass": name, "config": config, "input_sha256": sha(src), "output_sha256": sha(out), **extra}


@dataclass(frozen=True)
class PassConfig:
    """Base of a pass's config. Frozen: one value is one way of running the pass. `lineage()` is
    the record's config and `key()` hashes exactly the same fields, so a new field is recorded
    and keyed the moment it is declared. `TOOL` names what runs it (first in the record)."""

    PASS: ClassVar[str] = ""
    TOOL: ClassVar[str | None] = None

    def lineage(self) -> dict[str, Any]:
        head = {"tool": self.TOOL} if self.TOOL else {}
        return {**head, **config_fields(self)}

    def key(self, *inputs: str) -> str:
        """The pass's cache key: its name, its config and the hashes of what it reads."""
        return json_sha256({"pass": self.PASS, "config": self.lineage(), "inputs": list(inputs)})

    def record(self, src: Path | str | None, out: Path | str | None, ran: dict[str, Any] | None = None,
               **extra: Any) -> dict[str, Any]:
        """The lineage entry; `ran` adds what the tool reported doing (never a setting of its own)."""
        return lineage_record(self.PASS, {**self.lineage(), **(ran or {})}, src, out, **extra)


@dataclass
class Artifact:
    fmt: str
    precision: str
    files: dict[str, Path]
    entrypoint: str
    lineage: list[dict[str, Any]] = field(default_factory=list)

    @property
    def entry_path(self) -> Path:
        return self.files[self.entrypoint]

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files.values())

    def snapshot(self) -> Artifact:
        """This artifact as built (later passes append to a candidate's lineage, not to this)."""
        return Artifact(self.fmt, self.precision, dict(self.files), self.entrypoint, copy.deepcopy(self.lineage))

    def copy_to(self, work: Path) -> Artifact:
        """The same files under `work` (each candidate owns its folder) with its own lineage list."""
        work.mkdir(parents=True, exist_ok=True)
        files = {name: Path(shutil.copyfile(src, work / name)) for name, src in self.files.items()}
        return Artifact(self.fmt, self.precision, files, self.entrypoint, copy.deepcopy(self.lineage))


@dataclass
class PassContext:
    onnx_fp32: Path
    torch_model: Any  # None for ONNX-only sources
    torch_sha256: str | None
    example: dict[str, np.ndarray]
    calib: Dataset
    evaluation: Dataset
    transformer: bool
    calibrate_method: str = "minmax"
    calibration_samples: int = 128
    accuracy_control_drop: float | None = None
    arch: Architecture | None = None  # detected from the FP32 graph; picks the quantization scheme
    float_nodes: tuple[str, ...] = ()  # layers the accuracy fallback returned to float
    scheme: str | None = None  # a quantization scheme the accuracy fallback chose over the architecture's
    tflite_src: Path | None = None  # --tflite: the source model (compiler.tflite_source builds from it)
    reduce_range: bool = False  # the device class's 7-bit INT8 weights (ONNX Runtime passes read it)
    # Pass outputs of this build by PassConfig.key: a pass that already ran with the same config on
    # the same inputs (another device class, the sensitivity probe) is copied, not run again.
    # dataclasses.replace keeps the same dict, so every variant of the context shares it.
    built: dict[str, Artifact] = field(default_factory=dict, repr=False)

    @property
    def architecture(self) -> Architecture:
        if self.arch is not None:
            return self.arch
        return Architecture("transformer" if self.transformer else "other")

    def calibration_used(self) -> int:
        """How many calibration samples a calibrated pass actually reads."""
        return min(self.calibration_samples, self.calib.n)


def kept_in_float(arch: Architecture, applied: bool) -> dict[str, Any]:
    """Lineage: which subgraph the architecture's scheme kept in float, by node name."""
    if not applied or not arch.float_nodes:
        return {}
    why = {"detector": "detection head (box decode: DFL, anchor grid, strides, class sigmoid)",
           "transformer": "LayerNorm/Softmax/GELU and residual Adds"}.get(arch.kind, arch.kind)
    return {"kept_float": {"why": why, "nodes": list(arch.float_nodes)}}


def auto_chain(fmt: str, transformer: bool) -> list[str]:
    """`--precision auto`: the format's candidates, most aggressive first."""
    from compiler.formats import get_format

    return list(get_format(fmt).auto_chain(transformer))


def check_precision(fmt: str, precision: str) -> None:
    from compiler.formats import get_format

    get_format(fmt).check_precision(precision)


def build_artifact(fmt: str, precision: str, ctx: PassContext, work: Path) -> Artifact:
    """One candidate, built by the format's plugin (compiler.formats)."""
    from compiler.formats import get_format

    plugin = get_format(fmt)
    plugin.check_precision(precision)
    work.mkdir(parents=True, exist_ok=True)
    return plugin.build(precision, ctx, work)
