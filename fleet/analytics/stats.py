"""Small statistics for online quality: Wilson intervals and one-sided proportion tests.

Plain math (no scipy in the fleet's light path); normal approximations are fine at the sample
sizes the engine insists on before it judges (min labelled samples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054


def norm_sf(z: float) -> float:
    """P(Z > z) for a standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95% by default); (0, 1) when n == 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Test:
    """A one-sided test that the observed proportion is below the reference by more than `margin`."""

    statistic: float
    p_value: float
    significant: bool


def below_reference(k: int, n: int, p0: float, margin: float = 0.0, alpha: float = 0.05) -> Test:
    """H0: accuracy >= p0 - margin; H1: lower (one-sided z test of one proportion, reference known,
    e.g. the build-time eval)."""
    if n <= 0:
        return Test(0.0, 1.0, False)
    p_ref = min(1.0, max(0.0, p0 - margin))
    se = math.sqrt(max(p_ref * (1 - p_ref), 1e-12) / n)
    z = (k / n - p_ref) / se
    p = norm_sf(-z)
    return Test(round(z, 4), p, p < alpha)


def below_control(k1: int, n1: int, k0: int, n0: int, margin: float = 0.0, alpha: float = 0.05) -> Test:
    """H0: p1 >= p0 - margin; H1: the candidate (1) is worse than control (0) by more than margin
    (one-sided two-proportion z test, unpooled standard error)."""
    if n1 <= 0 or n0 <= 0:
        return Test(0.0, 1.0, False)
    p1, p0 = k1 / n1, k0 / n0
    se = math.sqrt(max(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0, 1e-12))
    z = (p1 - (p0 - margin)) / se
    p = norm_sf(-z)
    return Test(round(z, 4), p, p < alpha)
