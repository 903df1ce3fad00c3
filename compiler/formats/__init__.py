"""Output formats as plugins: one per format, each owning its precisions, its `--precision auto`
order, how it builds a candidate (which passes, with which configs) and the manifest fields its
runtime reads. The format names live here and in the plugins, nowhere else in the compiler:
`--format` choices, precision checks and the build dispatch are registry look-ups.
"""

from __future__ import annotations

from collections.abc import Iterator

from compiler.errors import CompileInputError
from compiler.formats.base import Format
from compiler.formats.onnx import ONNX
from compiler.formats.openvino import OPENVINO
from compiler.formats.tflite import TFLITE

__all__ = ["FORMATS", "Format", "FormatRegistry", "REFERENCE", "get_format"]


class FormatRegistry:
    """Format plugins by name, in the order `--format` lists them."""

    def __init__(self, *plugins: Format) -> None:
        self._plugins = {p.name: p for p in plugins}

    def __iter__(self) -> Iterator[Format]:
        return iter(self._plugins.values())

    def __contains__(self, name: object) -> bool:
        return name in self._plugins

    def names(self) -> tuple[str, ...]:
        return tuple(self._plugins)

    def precisions(self) -> tuple[str, ...]:
        """Every precision some format builds, first-seen order."""
        return tuple(dict.fromkeys(p for f in self for p in f.precisions))

    def get(self, name: str) -> Format:
        try:
            return self._plugins[name]
        except KeyError:
            raise CompileInputError(f"unknown format {name!r}; use one of {', '.join(self._plugins)}") from None


FORMATS = FormatRegistry(ONNX, OPENVINO, TFLITE)
REFERENCE = ONNX  # the FP32 reference every candidate is judged against runs in this format


def get_format(name: str) -> Format:
    return FORMATS.get(name)
