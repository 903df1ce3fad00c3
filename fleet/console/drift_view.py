"""The drift page of a version that is (or was) rolled out: the verdict its rollout's drift gates
reached, read from the wave's recorded verdict, and the gate's own settings for the page's report
(fleet.rollouts.gates.drift_params), so the console and the gate judge with one engine, one merge
and the same parameters instead of the fleet's [drift] settings saying "insufficient" about a
version the gate stopped."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, select

from fleet.drift.engine import DriftParams
from fleet.rollouts.models import Rollout, RolloutWave

DRIFT_GATES = ("feature_drift", "prediction_drift")


@dataclass
class RolloutDrift:
    rollout_id: int
    rollout_status: str
    wave: str | None                       # the wave whose recorded verdict is shown
    results: dict[str, dict[str, Any]]     # gate name -> recorded result (gate, status, value, threshold, detail)
    params: DriftParams                    # the rollout's feature-drift gate settings
    at: float | None = None

    def line(self, gate: str) -> str:
        """One line per drift gate, e.g. 'fail · 32 / 32 features drifted (100%, limit 30%)'."""
        r = self.results.get(gate)
        if r is None:
            return "not judged yet"
        d = r.get("detail") or {}
        if gate == "feature_drift":
            if not d.get("judged"):
                return f"{r['status']} · no data"
            return (f"{r['status']} · {len(d.get('drifted') or [])} / {d['judged']} features drifted "
                    f"({float(d.get('share', 0.0)):.0%}, limit {self.params.dataset_drift_share:.0%})")
        refs = [f"{k} {v['psi']:.3f}" for k, v in d.items() if isinstance(v, Mapping) and "psi" in v]
        if not refs:
            return f"{r['status']} · no data" if r["status"] == "wait" else f"{r['status']} · no reference"
        return f"{r['status']} · PSI " + ", ".join(refs) + f" (limit {r.get('threshold')})"


def gate_settings(spec: Mapping[str, Any], wave: int | None) -> Any:
    """The gates of a stored spec's wave (the first before any verdict), read as the evaluator
    reads it (RolloutSpec.from_stored: migrated, lenient); defaults for a spec it cannot read."""
    from fleet.rollouts.spec import Gates, RolloutSpec, SpecError

    try:
        waves = RolloutSpec.from_stored(spec).waves
    except SpecError:
        return Gates()
    return waves[wave if wave is not None and 0 <= wave < len(waves) else 0].gates


def for_version(db: Session, name: str, version: int, rollout_id: int | None = None) -> RolloutDrift | None:
    """The newest rollout of (name, version) (or `rollout_id`) and its latest drift-gate verdict."""
    from fleet.rollouts.gates import drift_params

    q = select(Rollout).where(Rollout.model_name == name, Rollout.version == version)
    if rollout_id is not None:
        q = q.where(Rollout.id == rollout_id)
    r = db.exec(q.order_by(Rollout.id.desc()).limit(1)).first()
    if r is None:
        return None
    waves = db.exec(select(RolloutWave).where(RolloutWave.rollout_id == r.id)
                    .order_by(RolloutWave.index.desc())).all()
    shown, results, at = None, {}, None
    for w in waves:
        got = {x.get("gate"): x for x in (w.last_verdict or {}).get("results") or [] if x.get("gate") in DRIFT_GATES}
        if got:
            shown, results, at = w, got, (w.last_verdict or {}).get("at")
            break
    g = gate_settings(r.spec or {}, None if shown is None else shown.index)
    return RolloutDrift(int(r.id or 0), r.status, None if shown is None else shown.name, results,
                        drift_params(g, g.max_feature_psi), at)
