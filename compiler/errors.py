"""Errors the CLI maps to exit codes: bad input is 2, a failed quality gate is 1."""

from __future__ import annotations


class CompileInputError(Exception):
    """The caller gave something we cannot use (path, data, option); the message says what to fix."""


class GateFailure(Exception):
    """A compiled artifact missed a budget; `gates` names every gate that failed."""

    def __init__(self, message: str, gates: list[str]) -> None:
        super().__init__(message)
        self.gates = gates
