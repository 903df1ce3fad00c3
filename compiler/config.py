"""The build configuration: one dataclass filled from a TOML file, then from CLI flags (flags win)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from agent.toml_files import read_toml
from compiler.errors import CompileInputError
from compiler.evaluate import TASKS
from compiler.formats import FORMATS
from compiler.quantize_onnx import CALIBRATION_METHODS

PRECISION_CHOICES = ("auto", *FORMATS.precisions())
FORMAT_CHOICES = FORMATS.names()


def unkeyed(why: str) -> dict[str, str]:
    """Field metadata: this setting stays out of the hyper-parameters and the cache key, and why.
    Every other field is keyed, so a new setting can never give a stale cache hit."""
    return {"unkeyed": why}


def with_distill() -> dict[str, str]:
    """Field metadata: keyed only when --distill is set (the student's training settings)."""
    return {"only_with": "distill"}


_SOURCE = unkeyed("hashed by content: provenance.inputs")
_OUTPUT = unkeyed("where results go, not what they are")
_MEASURE = unkeyed("how latency is measured; it is in the report, never in the bundle")


@dataclass
class CompileConfig:
    """Everything one `edgefleet compile` run needs; see docs/compiler.md for each field."""

    onnx: str | None = field(default=None, metadata=_SOURCE)
    tflite: str | None = field(default=None, metadata=_SOURCE)  # a .tflite source, bundled for TFLite classes (compiler/tflite_source.py)
    torch: Any = field(default=None, metadata=_SOURCE)  # "module:function", a .pt2 path, or an nn.Module (Python API)
    example_input: tuple[int, ...] | None = None
    calib: Any = field(default=None, metadata=_SOURCE)  # .npz path, "module:function", Dataset or mapping
    eval: Any = field(default=None, metadata=_SOURCE)
    device_classes: list[str] = field(default_factory=lambda: ["x86-64-generic"],
                                      metadata=unkeyed("one key per class, holding the class itself"))
    format: str | None = None
    precision: str | None = None  # None: the device class's precision
    calibrate_method: str = "minmax"
    calibration_samples: int = 128
    exporter: str = "auto"
    distill: str | None = None
    temperature: float = field(default=4.0, metadata=with_distill())
    alpha: float = field(default=0.7, metadata=with_distill())
    epochs: int = field(default=30, metadata=with_distill())
    seed: int = 0
    max_accuracy_drop: float | None = None
    max_slice_gap_increase: float | None = None
    max_slice_gap: float | None = None  # absolute worst-slice gap (None: the device class's, else not gated)
    min_slice_accuracy: float | None = None  # the worst slice's own accuracy (classification)
    slice_mitigation: bool = True  # a failed slice gate: retry INT8 with slice-balanced calibration
    slices: list[str] = field(default_factory=list)  # slice keys the device keeps outcomes by (compiler/slice_keys.py)
    max_size_mb: float | None = None
    max_latency_ms: float | None = None
    min_cosine: float | None = None  # embedding: worst sample's cosine to FP32 (default in compiler.gates)
    min_p1_cosine: float | None = None  # embedding: 1st-percentile cosine
    max_p99_error: float | None = None  # regression: 99th-percentile per-sample RMS error / reference std
    task: str = "classification"
    name: str = "model"
    version: int = 1
    signing_key: Any = field(default=None, metadata=unkeyed("keyed by its key id: provenance.signing_key_id"))  # path to an Ed25519 PEM, or a key object
    out: Path = field(default=Path("build"), metadata=_OUTPUT)
    cache_dir: Path | None = field(default=None, metadata=_OUTPUT)
    report_json: Path | None = field(default=None, metadata=_OUTPUT)
    latency_iterations: int = field(default=50, metadata=_MEASURE)
    min_slice_size: int = 5
    # INT8 within the quality budgets: NNCF accuracy control (OpenVINO, classification) and the
    # per-layer sensitivity fallback that returns the worst layers to float (compiler/candidates.py).
    accuracy_control: bool = True
    devices_dir: Path | None = field(default=None, metadata=unkeyed("the class read from it is in the key"))
    progress: bool = field(default=True, metadata=_OUTPUT)
    training_run: Any = field(default=None, metadata=unkeyed("read into provenance.training"))  # run.toml/run.json (or a mapping): provenance.training (compiler/training_run.py)
    parent: Any = field(default=None, metadata=unkeyed("read into provenance.parent"))  # the bundle this model was distilled or re-quantized from: provenance.parent
    mlflow_run: str | None = field(default=None, metadata=unkeyed("read into provenance.training"))  # MLflow run id: read into provenance.training, build metrics logged back
    # The raw-input contract (compiler/raw_inputs.py): the training pipeline shipped in the bundle.
    sklearn_pipeline: str | None = field(default=None, metadata=unkeyed("hashed: provenance.preprocess_sha256"))  # fitted scikit-learn pipeline (.joblib/.pkl; trusted: a pickle is code)
    preprocess: Any = field(default=None, metadata=unkeyed("hashed: provenance.preprocess_sha256"))  # "module:function" returning a torch preprocess nn.Module (or the module)
    training_transform: str | None = None  # "module:function": raw columns -> model input (parity reference)
    raw_eval: str | None = None  # raw eval rows (CSV with header, or .npz of named columns)
    feature_schema: str | None = None  # TOML [features.<name>] overrides (unit, min, max, categories)
    parity_atol: float = 1e-4
    parity_rtol: float = 1e-4
    # Latency measured on an enrolled device of this class through the fleet (compiler/profile_remote.py)
    profile_on: str | None = field(default=None, metadata=_MEASURE)  # that class is never read from the cache
    profile_runs: int = field(default=50, metadata=_MEASURE)
    profile_warmup: int = field(default=5, metadata=_MEASURE)
    profile_timeout_s: float = field(default=300.0, metadata=_MEASURE)

    def validate(self) -> None:
        if isinstance(self.device_classes, str):
            self.device_classes = [self.device_classes]
        if [bool(self.onnx), self.torch is not None, bool(self.tflite)].count(True) != 1:
            raise CompileInputError("give exactly one model source: --onnx PATH, --tflite PATH or --torch "
                                    "module:function")
        if self.eval is None and not self.raw_eval:
            raise CompileInputError("--eval data is required: every build is checked against it")
        if self.task not in TASKS:
            raise CompileInputError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.precision is not None and self.precision not in PRECISION_CHOICES:
            raise CompileInputError(f"--precision must be one of {', '.join(PRECISION_CHOICES)}")
        if self.format is not None and self.format not in FORMAT_CHOICES:
            raise CompileInputError(f"--format must be one of {', '.join(FORMAT_CHOICES)}")
        if self.calibrate_method not in CALIBRATION_METHODS:
            raise CompileInputError(f"--calibrate-method must be one of {', '.join(CALIBRATION_METHODS)}")
        if not self.device_classes:
            raise CompileInputError("name at least one --device-class")
        if self.distill and (self.onnx or self.tflite):
            raise CompileInputError("--distill needs a PyTorch teacher (--torch); an ONNX file cannot be trained")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 0:
            raise CompileInputError("--version must be a non-negative integer")
        if self.signing_key is None:
            raise CompileInputError("--signing-key is required: bundles are always signed")
        if self.slices:  # syntax here; columns against the data in compile_model (compiler/slice_keys.py)
            from compiler.slice_keys import parse

            self.slices = [k.spec for k in parse(self.slices)]
            if self.task == "embedding":
                raise CompileInputError("--slice-key needs a classification or regression model (labels per slice)")

    def hyperparameters(self) -> dict[str, Any]:
        """The knobs that change the artifact (recorded in provenance and in the cache key): every
        field, in declaration order, except those whose metadata says why not (see `unkeyed`)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if "unkeyed" in f.metadata or (f.metadata.get("only_with") and not getattr(self, f.metadata["only_with"])):
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


_PATH_FIELDS = {"out", "cache_dir", "report_json", "devices_dir"}


def load_toml(path: Path) -> dict[str, Any]:
    """Read compile.toml; keys are the CLI option names (dashes or underscores)."""
    raw = read_toml(path, CompileInputError)
    raw = raw.get("compile", raw)
    known = {f.name for f in fields(CompileConfig)}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        k = key.replace("-", "_")
        if k == "device_class":
            k = "device_classes"
            value = [value] if isinstance(value, str) else value
        if k not in known:
            raise CompileInputError(f"config {path}: unknown key {key!r}")
        if k in _PATH_FIELDS and value is not None:
            value = Path(value)
        if k == "example_input" and value is not None:
            value = parse_shape(value)
        out[k] = value
    return out


def parse_shape(value: Any) -> tuple[int, ...]:
    """`1,64` or `[1, 64]` -> (1, 64)."""
    try:
        if isinstance(value, str):
            dims = tuple(int(v) for v in value.replace("x", ",").split(",") if v.strip())
        else:
            dims = tuple(int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise CompileInputError(f"--example-input {value!r} must be a shape like 1,64") from exc
    if not dims or any(d < 1 for d in dims):
        raise CompileInputError(f"--example-input {value!r} must be a shape of positive integers like 1,64")
    return dims


def merge(toml_values: dict[str, Any], flag_values: dict[str, Any]) -> CompileConfig:
    cfg = CompileConfig(**{**toml_values, **flag_values})
    cfg.validate()
    return cfg
