"""Retry timing for the device's network calls: exponential backoff with jitter, bounded by a
total time budget. Without it a call retried at once fails for good on a blip (a fleet restart
takes seconds to a minute), and a thousand devices retrying in step hammer the fleet the moment
it comes back; the jitter spreads them out."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays base_s, 2*base_s, 4*base_s ... capped at cap_s, each drawn from [d/2, d] ("equal
    jitter": never a hammering zero, never in lockstep), until budget_s has passed."""

    base_s: float = 0.5
    cap_s: float = 15.0
    budget_s: float = 120.0         # total time worth retrying (a fleet restart, a short outage)
    max_attempts: int = 50
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.monotonic

    def delays(self) -> Iterator[float]:
        """The pause before each retry; stops when the budget or the attempts are used up."""
        start = self.clock()
        for n in range(self.max_attempts - 1):
            d = min(self.cap_s, self.base_s * (2 ** n))
            d = d / 2 + self.rng.uniform(0, d / 2)
            left = self.budget_s - (self.clock() - start)
            if left <= 0:
                return
            yield min(d, left)


def reconnect_bounds(min_s: float, max_s: float, rng: random.Random | None = None) -> tuple[float, float]:
    """Per-client bounds for paho's exponential reconnect delay (reconnect_delay_set): the first
    delay drawn from [min_s, 2*min_s], the cap from [max_s/2, max_s]. Each device doubles from its
    own start, so a fleet that lost its broker together does not come back in lockstep."""
    rng = rng or random.Random()
    lo = max(0.1, min_s) * rng.uniform(1.0, 2.0)
    hi = max(lo, max_s * rng.uniform(0.5, 1.0))
    return lo, hi
