"""Deterministic wave assignment: devices are ordered by a stable hash of (seed, device id) and
each wave takes the next slice of that order, so a rerun of the same rollout picks the same
canary devices, and the choice does not depend on enrolment order or database row order.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence

from fleet.rollouts.spec import WaveSpec


def stable_rank(seed: str, device_id: str) -> int:
    """A 64-bit rank for the device; the same inputs give the same rank on any machine."""
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{device_id}".encode()).digest()[:8], "big")


def wave_sizes(waves: Sequence[WaveSpec], total: int) -> list[int]:
    """Cumulative device counts per wave. A percent wave gets at least one device when any exist
    (a 1% canary of a 20-device fleet is one device, not zero); counts are capped at `total`."""
    out: list[int] = []
    prev = 0
    for w in waves:
        if w.percent is not None:
            n = math.ceil(total * w.percent / 100.0 - 1e-9)
            n = max(n, 1) if total else 0
        else:
            n = int(w.count or 0)
        n = max(prev, min(total, n))
        out.append(n)
        prev = n
    return out


def assign_waves(seed: str, device_ids: Iterable[str], waves: Sequence[WaveSpec]) -> list[list[str]]:
    """Split devices into waves: wave i holds the devices ranked [size(i-1), size(i)).

    Devices beyond the last cumulative size (a last wave under 100%) are not targeted.
    """
    ordered = sorted(set(device_ids), key=lambda d: (stable_rank(seed, d), d))
    sizes = wave_sizes(waves, len(ordered))
    out: list[list[str]] = []
    prev = 0
    for n in sizes:
        out.append(ordered[prev:n])
        prev = n
    return out
