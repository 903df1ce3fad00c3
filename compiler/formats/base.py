"""What a format plugin is: data (name, precisions, auto order, entry file) plus how to build a
candidate and how to read the tensor specs the manifest carries."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.runtimes.config import runtime_config
from compiler.errors import CompileInputError
from compiler.passes import Artifact, PassConfig, PassContext, jsonable
from compiler.provenance import json_sha256

Specs = list[dict[str, Any]]


@dataclass(frozen=True)
class Step:
    """One pass a format runs for a precision: its config, why the config is what it is (recorded
    beside it: architecture, scheme), and the hashes of what the pass reads (model, data)."""

    config: PassConfig
    why: dict[str, Any]
    reads: tuple[str, ...]

    @property
    def key(self) -> str:
        """The config's key with the why beside it: a reused output's record is word for word
        the record this step would have written."""
        return json_sha256({"config": self.config.key(*self.reads), "why": jsonable(self.why)})


@dataclass(frozen=True)
class Format:
    name: str
    precisions: tuple[str, ...]
    auto: tuple[str, ...]  # `--precision auto`: most aggressive first; the fastest passing one is kept
    entrypoint: str  # the model file in the bundle
    auto_transformer: tuple[str, ...] | None = None  # a different order for transformer graphs
    from_torch: bool = False  # built from the PyTorch model, not from the FP32 ONNX reference
    takes_tflite_source: bool = False  # a --tflite source model is bundled for this format
    named_after_source: bool = False  # tensors keep the source model's names (runtime_config binds them)

    def auto_chain(self, transformer: bool) -> tuple[str, ...]:
        return self.auto_transformer if transformer and self.auto_transformer else self.auto

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise CompileInputError(f"precision {precision!r} is not available for format {self.name!r}; use one "
                                    f"of {', '.join(self.precisions)} or auto")

    def artifact(self, precision: str, files: dict[str, Path], lineage: list[dict[str, Any]]) -> Artifact:
        return Artifact(self.name, precision, files, self.entrypoint, lineage)

    def build(self, precision: str, ctx: PassContext, work: Path) -> Artifact:
        """The candidate for `precision`: its pass's output, reused when the same pass with the
        same config already ran on the same inputs in this build (the step's key says so)."""
        step = self.step(precision, ctx)
        if step is None:
            return self.run(precision, None, ctx, work)
        done = ctx.built.get(step.key)
        if done is not None:
            return done.copy_to(work)
        art = self.run(precision, step, ctx, work)
        ctx.built[step.key] = art.snapshot()
        return art

    def step(self, precision: str, ctx: PassContext) -> Step | None:
        """The pass for `precision` (None: nothing to run, e.g. the FP32 reference bundled as is)."""
        raise NotImplementedError(self.name)

    def run(self, precision: str, step: Step | None, ctx: PassContext, work: Path) -> Artifact:
        """Run the step into `work`; the artifact carries its lineage record."""
        raise NotImplementedError(self.name)

    def io_specs(self, path: Path, source: tuple[Specs, Specs] | None) -> tuple[Specs, Specs, dict[str, Any] | None]:
        """(inputs, outputs, runtime_config.tflite binding or None) read from the compiled file."""
        raise NotImplementedError(self.name)

    def runtime_fields(self, path: Path, threads: int = 1,
                       source: tuple[Specs, Specs] | None = None) -> dict[str, Any]:
        """The manifest fields a runtime reads: format, tensor specs and runtime_config, from the file."""
        inputs, outputs, binding = self.io_specs(Path(path), source)
        return {"model": {"format": self.name}, "inputs": inputs, "outputs": outputs,
                "runtime_config": runtime_config(self.name, threads=threads, tflite=binding)}
