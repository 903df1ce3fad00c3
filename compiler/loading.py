"""Resolve `module:function` strings and model sources given on the command line."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compiler.errors import CompileInputError


def load_callable(spec: str, what: str) -> Callable[..., Any]:
    """Import `module:function`; the current directory is importable, as for `python -m`."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CompileInputError(f"{what} {spec!r} must look like module:function")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the user's module failing as it loads
        raise CompileInputError(f"{what} {spec!r}: cannot import module {module_name!r} ({exc})") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CompileInputError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CompileInputError(f"{what} {spec!r} is not callable")
    return _as_input_error(obj, f"{what} {spec!r}")


def _as_input_error(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
    """The user's function failing is bad input (exit 2, one line), not a failed gate or a crash."""

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CompileInputError:
            raise
        except Exception as exc:
            raise CompileInputError(f"{label} raised {type(exc).__name__}: {exc}") from exc

    return call


def load_torch_model(spec: Any) -> Any:
    """An `nn.Module` from a module instance, a `module:function`, or an exported-program file (.pt2)."""
    import torch

    if isinstance(spec, torch.nn.Module):
        return eval_mode(spec)
    text = str(spec)
    path = Path(text)
    if path.suffix in (".pt2", ".pt") or path.exists():
        if not path.is_file():
            raise CompileInputError(f"PyTorch model file {path} does not exist")
        try:
            return torch.export.load(str(path)).module()
        except Exception as exc:  # torch raises many kinds for a bad archive
            raise CompileInputError(f"{path} is not a torch.export program (.pt2): {exc}") from exc
    model = load_callable(text, "--torch")()
    if not isinstance(model, torch.nn.Module):
        raise CompileInputError(f"--torch {text!r} returned {type(model).__name__}, expected torch.nn.Module")
    return eval_mode(model)


def eval_mode(model: Any) -> Any:
    """model.eval(), except for modules unlifted from a .pt2, which refuse it (they are fixed graphs)."""
    try:
        return model.eval()
    except (NotImplementedError, RuntimeError):
        return model
