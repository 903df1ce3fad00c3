"""Rollout spec versions as data: what changed in each `schema_version`, applied in order to a
spec of an older version before it is parsed. A Rollout row keeps the spec it was created with
for its whole life, so a renamed field is migrated here, never broken in a tick.

To rename a `Gates` field: bump SCHEMA_VERSION and add a Migration naming the old and new name.
To register a new rollout gate: bump SCHEMA_VERSION, list the gates in GATES_BY_VERSION and add a
Migration that pins `enabled` of older specs (which leave it out: "every gate of my version") to
the gates of their version, so a rollout in flight is never judged by a gate it did not know.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 2

# The gates a wave that names none is judged by, per schema version (gates.REGISTRY must equal the
# current version's: a test checks it).
GATES_V1 = ("installs", "success", "reporting", "errors", "latency_p99", "prediction_drift", "feature_drift",
            "shadow_agreement", "online_accuracy", "slice_gap")
GATES_BY_VERSION: Mapping[int, tuple[str, ...]] = {1: GATES_V1, 2: GATES_V1}


@dataclass(frozen=True)
class Migration:
    """From version `to - 1` to `to`: gate fields renamed (old -> new) and gate fields added
    with the value an older spec meant by leaving them out."""

    to: int
    renamed_gates: Mapping[str, str] = field(default_factory=dict)
    added_gates: Mapping[str, Any] = field(default_factory=dict)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(2, renamed_gates={"success_threshold": "min_success"}, added_gates={"enabled": list(GATES_V1)}),
)


class SpecVersionError(ValueError):
    """A spec names a schema version this fleet cannot read."""


def renamed_from(old: str) -> str | None:
    """The current name of a gate field that was renamed (for a helpful refusal)."""
    for m in MIGRATIONS:
        if old in m.renamed_gates:
            return m.renamed_gates[old]
    return None


def version_of(data: Mapping[str, Any], *, strict: bool) -> int:
    v = data.get("schema_version", SCHEMA_VERSION if strict else 1)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise SpecVersionError(f"schema_version must be a positive integer, got {v!r}")
    if v > SCHEMA_VERSION and strict:
        raise SpecVersionError(f"schema_version {v} is newer than this fleet reads ({SCHEMA_VERSION})")
    return min(v, SCHEMA_VERSION)


def migrate(data: Mapping[str, Any], *, strict: bool) -> dict[str, Any]:
    """The spec in the current shape. API input (strict) without a version is taken as current;
    a stored spec without one was written before versions existed (version 1). A stored spec
    from a newer fleet is read as current (its unknown fields are dropped by the lenient parse)."""
    if not isinstance(data, Mapping):
        raise SpecVersionError("a rollout spec is a JSON object")
    version = version_of(data, strict=strict)
    out = dict(data)
    for m in MIGRATIONS:
        if m.to <= version:
            continue
        if "gates" in out:
            out["gates"] = _gates(out["gates"], m, top=True)
        out["waves"] = [{**w, "gates": _gates(w.get("gates"), m, top=False)} if isinstance(w, Mapping) else w
                        for w in out.get("waves") or ()]
    out["schema_version"] = SCHEMA_VERSION
    return out


def _gates(gates: Any, m: Migration, *, top: bool) -> Any:
    if gates is not None and not isinstance(gates, Mapping):
        return gates   # the parser refuses it with the field named
    g = dict(gates or {})
    for old, new in m.renamed_gates.items():
        if old in g:
            value = g.pop(old)
            g.setdefault(new, value)
    if not top:   # wave gates are complete in a stored spec; the top-level defaults only fill them
        for name, value in m.added_gates.items():
            g.setdefault(name, value)
    return g
