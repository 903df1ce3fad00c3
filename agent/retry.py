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
