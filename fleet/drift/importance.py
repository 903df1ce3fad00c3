"""Importance-weighted drift (issue 15 item 5): a drifted feature the model ignores pages nobody.

The compiler stores each version's permutation importance in the manifest (`explain`) and, per drift
feature, normalised to a total of 1, in `drift_baseline.importance` (compiler/explain.py), so every
consumer of the baseline (drift reports, alerts, rollout gates) gets it without extra plumbing.
With importance, the "share of drifted features" becomes the share of importance mass that drifted,
and a feature below IGNORED_WEIGHT of the mass never raises a level on its own. Without importance
(bundles built before it) everything counts by feature, as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

IGNORED_WEIGHT = 0.01  # under 1% of the version's importance mass: the model ignores the feature


@dataclass
class WeightedShare:
    share: float            # importance mass (or feature count) share of the judged features that drifted
    count_share: float      # plain feature-count share, always reported so the console can show both
    weighted: bool
    counted: list[str] = field(default_factory=list)   # drifted features that count
    ignored: list[str] = field(default_factory=list)   # drifted, but the model ignores them
    weights: dict[str, float] = field(default_factory=dict)


def importance_weights(baseline: Mapping[str, Any] | None,
                       explicit: Mapping[str, float] | None = None) -> dict[str, float] | None:
    """{feature: weight} from `explicit`, else the baseline's `importance`; None when absent."""
    src = explicit if explicit else (baseline or {}).get("importance") if isinstance(baseline, Mapping) else None
    if not src or not isinstance(src, Mapping):
        return None
    out = {}
    for k, v in src.items():
        try:
            out[str(k)] = max(0.0, float(v))
        except (TypeError, ValueError):
            continue
    return out if sum(out.values()) > 0 else None


def weighted_share(drifted: Sequence[str], judged: Sequence[str],
                   weights: Mapping[str, float] | None) -> WeightedShare:
    """The drifted share of `judged` features, by importance mass when `weights` covers them."""
    count_share = len(drifted) / len(judged) if judged else 0.0
    if not weights or not any(n in weights for n in judged):
        return WeightedShare(count_share, count_share, False, list(drifted))
    total = sum(weights.get(n, 0.0) for n in judged)
    if total <= 0:
        return WeightedShare(0.0, count_share, True, [], list(drifted))
    w = {n: weights.get(n, 0.0) / total for n in judged}
    counted = [n for n in drifted if w.get(n, 0.0) >= IGNORED_WEIGHT]
    ignored = [n for n in drifted if w.get(n, 0.0) < IGNORED_WEIGHT]
    share = sum(w[n] for n in drifted if n in w)
    return WeightedShare(round(share, 4), round(count_share, 4), True, counted, ignored,
                         {n: round(v, 4) for n, v in w.items()})
