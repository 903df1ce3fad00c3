"""Importing any agent module must not pull heavy or server-side packages."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import agent

FORBIDDEN = ["torch", "openvino", "tensorflow", "nncf", "flask", "sqlmodel", "fleet", "compiler",
             "ai_edge_litert", "onnx", "sklearn"]


def test_importing_every_agent_module_stays_light() -> None:
    mods = sorted(m.name for m in pkgutil.walk_packages(agent.__path__, "agent.")
                  if not m.name.endswith("__main__"))
    assert "agent.daemon" in mods and "agent.runtimes.litert_runtime" in mods
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        f"bad = [f for f in {FORBIDDEN!r} if f in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"agent imports pulled in: {out.stdout.strip()}"
