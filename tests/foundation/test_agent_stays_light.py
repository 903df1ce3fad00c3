"""Importing every module of `agent` must not load the heavy stacks (run in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "openvino", "tensorflow", "nncf", "flask", "sqlmodel", "fleet", "compiler", "ai_edge_litert")

CODE = f"""
import importlib, pkgutil, sys, agent
for m in pkgutil.walk_packages(agent.__path__, 'agent.'):
    importlib.import_module(m.name)
print(' '.join(h for h in {HEAVY!r} if h in sys.modules))
"""


def test_agent_imports_nothing_heavy():
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"agent loads heavy modules: {r.stdout}"
