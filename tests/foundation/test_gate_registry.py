"""The shared gate shape (edgefleet.gates): registries refuse unknown and duplicate names,
skip gates that do not apply, and combine verdicts fail > wait > pass."""

from dataclasses import dataclass

import pytest

from edgefleet.gates import FAIL, PASS, WAIT, GateRegistry, GateVerdict, UnknownGate, overall


@dataclass(frozen=True)
class AtMost:
    name: str
    needs: tuple[str, ...] = ("value",)

    def evaluate(self, evidence, params):
        limit = params.get(self.name)
        if limit is None:
            return None
        v = evidence[self.name]
        return GateVerdict(self.name, PASS if v <= limit else FAIL, v, limit)


def test_registry_evaluates_named_gates_in_order_and_skips_unset_ones():
    reg = GateRegistry("test", [AtMost("a"), AtMost("b"), AtMost("c")])
    out = reg.evaluate({"a": 1, "b": 5, "c": 0}, {"a": 2, "b": 3})
    assert [(v.gate, v.status) for v in out] == [("a", PASS), ("b", FAIL)]
    assert [v.gate for v in reg.evaluate({"a": 1, "b": 5}, {"a": 2, "b": 3}, names=["b", "a"])] == ["b", "a"]


def test_unknown_and_duplicate_names_are_refused_with_the_known_ones():
    reg = GateRegistry("rollout", [AtMost("a")])
    with pytest.raises(UnknownGate, match="unknown rollout gate 'zz'; known: a"):
        reg.select(["zz"])
    with pytest.raises(ValueError, match="registered twice"):
        reg.register(AtMost("a"))


def test_verdict_status_is_checked_and_overall_orders_fail_wait_pass():
    with pytest.raises(ValueError, match="not one of"):
        GateVerdict("x", "ok")
    v = lambda s: GateVerdict("g", s)  # noqa: E731
    assert overall([v(PASS), v(WAIT), v(FAIL)]) == FAIL
    assert overall([v(PASS), v(WAIT)]) == WAIT
    assert overall([v(PASS)]) == PASS and overall([]) == PASS
