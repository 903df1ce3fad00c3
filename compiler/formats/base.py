"""What a format plugin is: data (name, precisions, auto order, entry file) plus how to build a
candidate and how to read the tensor specs the manifest carries."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.runtimes.config import runtime_config
from compiler.errors import CompileInputError
from compiler.passes import Artifact, PassContext

Specs = list[dict[str, Any]]


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
        """Run this format's passes for `precision`; the artifact carries their lineage records."""
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
