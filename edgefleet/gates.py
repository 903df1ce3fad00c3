"""The one shape of a gate, for the compiler's quality gates and the fleet's rollout gates.

A gate is data: a name, the evidence it reads, and a pure `evaluate(evidence, params)` that
returns a verdict. Registries map names to gates, so a rollout spec or a compile config names
its gates and an unknown name is refused with the list of known ones (never a KeyError deep in
a tick). Pure Python, no dependencies: the compiler and the fleet both import it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

PASS, FAIL, WAIT = "pass", "fail", "wait"
STATUSES = (PASS, FAIL, WAIT)

E = TypeVar("E", contravariant=True)   # the evidence a family of gates reads
P = TypeVar("P", contravariant=True)   # the parameters (budgets, thresholds) they compare with


@dataclass(frozen=True)
class GateVerdict:
    """What one gate concluded: pass, fail or wait (not enough evidence yet), with the measured
    value and the threshold it was held to, in the same unit, and the evidence behind it."""

    gate: str
    status: str
    value: float | None = None
    threshold: float | None = None
    detail: Any = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"gate {self.gate!r}: status {self.status!r} is not one of {', '.join(STATUSES)}")

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def to_dict(self) -> dict[str, Any]:
        return {"gate": self.gate, "status": self.status, "value": self.value, "threshold": self.threshold,
                "detail": self.detail}


class Gate(Protocol[E, P]):
    """A named check of evidence against parameters. `needs` names the evidence it reads (for
    docs, the console and for skipping gates whose evidence a deployment never produces)."""

    @property
    def name(self) -> str: ...

    @property
    def needs(self) -> tuple[str, ...]: ...

    def evaluate(self, evidence: E, params: P) -> GateVerdict | None:
        """The verdict, or None when the gate does not apply (an optional budget nobody set)."""
        ...


class UnknownGate(ValueError):
    """A spec or config named a gate no registry holds."""


class GateRegistry(Generic[E, P]):
    """Gates by name, in registration order (the order verdicts are reported in)."""

    def __init__(self, kind: str, gates: Iterable[Gate[E, P]] = ()) -> None:
        self.kind = kind
        self._gates: dict[str, Gate[E, P]] = {}
        for g in gates:
            self.register(g)

    def register(self, gate: Gate[E, P]) -> Gate[E, P]:
        if gate.name in self._gates:
            raise ValueError(f"{self.kind} gate {gate.name!r} is registered twice")
        self._gates[gate.name] = gate
        return gate

    def names(self) -> tuple[str, ...]:
        return tuple(self._gates)

    def __iter__(self) -> Iterator[Gate[E, P]]:
        return iter(self._gates.values())

    def __contains__(self, name: object) -> bool:
        return name in self._gates

    def get(self, name: str) -> Gate[E, P]:
        try:
            return self._gates[name]
        except KeyError:
            raise UnknownGate(f"unknown {self.kind} gate {name!r}; known: {', '.join(self._gates)}") from None

    def select(self, names: Iterable[str] | None = None) -> list[Gate[E, P]]:
        """The named gates (all of them when names is None), refusing unknown names up front."""
        return list(self) if names is None else [self.get(n) for n in names]

    def evaluate(self, evidence: E, params: P, names: Iterable[str] | None = None) -> list[GateVerdict]:
        out = []
        for g in self.select(names):
            verdict = g.evaluate(evidence, params)
            if verdict is not None:
                out.append(verdict)
        return out


def overall(verdicts: Iterable[GateVerdict]) -> str:
    """fail if any gate failed, else wait if any is waiting, else pass."""
    statuses = {v.status for v in verdicts}
    return FAIL if FAIL in statuses else WAIT if WAIT in statuses else PASS
