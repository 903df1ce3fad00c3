"""The agent's shape (issue 17): small modules with one job, short functions, and parts wired by
typed collaborators rather than bundles of callbacks."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import agent
from agent.commands import CommandHandler
from agent.lifecycle import Lifecycle
from agent.local_server import LocalServer
from agent.serving import Predictor

AGENT = Path(agent.__file__).parent
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules() -> list[Path]:
    return sorted(AGENT.rglob("*.py"))


def test_no_agent_module_over_400_lines() -> None:
    sizes = {p.relative_to(AGENT).as_posix(): len(p.read_text().splitlines()) for p in _modules()}
    assert "local_server.py" in sizes and "daemon.py" in sizes
    over = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines: {over}"


def test_no_agent_function_over_60_lines() -> None:
    over = []
    for p in _modules():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    over.append(f"{p.relative_to(AGENT)}:{node.lineno} {node.name} ({n} lines)")
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines: {over}"


def test_lifecycle_and_commands_take_typed_collaborators_not_callbacks() -> None:
    for cls in (Lifecycle, CommandHandler, Predictor):
        params = inspect.signature(cls.__init__).parameters
        callbacks = [name for name, p in params.items() if "Callable" in str(p.annotation)]
        assert not callbacks, f"{cls.__name__} takes callbacks: {callbacks}"
        assert len(params) - 1 <= 8, f"{cls.__name__} takes {len(params) - 1} parameters"
    assert "report" in inspect.signature(Lifecycle.__init__).parameters
    assert "health" in inspect.signature(Lifecycle.__init__).parameters   # the [health] section, whole
    assert "cfg" in inspect.signature(CommandHandler.__init__).parameters
    assert callable(LocalServer.from_config)                                # the [serving] section, whole
