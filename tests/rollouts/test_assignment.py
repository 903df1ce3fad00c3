from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.rollouts.assignment import assign_waves, stable_rank, wave_sizes
from fleet.rollouts.spec import WaveSpec

LADDER = (WaveSpec("c", percent=1), WaveSpec("a", percent=10), WaveSpec("b", percent=50),
          WaveSpec("d", percent=100))


def test_same_seed_same_devices_whatever_the_input_order():
    ids = [f"dev-{i}" for i in range(1000)]
    first = assign_waves("digits:2", ids, LADDER)
    shuffled = ids[:]
    random.Random(1).shuffle(shuffled)
    assert assign_waves("digits:2", shuffled, LADDER) == first
    assert [len(w) for w in first] == [10, 90, 400, 500]


def test_another_seed_picks_another_canary():
    ids = [f"dev-{i}" for i in range(1000)]
    assert assign_waves("digits:2", ids, LADDER)[0] != assign_waves("digits:3", ids, LADDER)[0]


def test_small_fleet_still_gets_a_one_device_canary():
    assert wave_sizes(LADDER, 20) == [1, 2, 10, 20]
    assert wave_sizes(LADDER, 0) == [0, 0, 0, 0]
    assert wave_sizes((WaveSpec("a", count=5), WaveSpec("b", count=50)), 20) == [5, 20]


def test_rank_is_stable_across_processes():
    # a fixed value: the rank must never depend on Python's per-process hash seed
    assert stable_rank("digits:2", "dev-1") == int.from_bytes(
        __import__("hashlib").sha256(b"digits:2\x00dev-1").digest()[:8], "big")


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 300), pcts=st.lists(st.floats(0.5, 100), min_size=1, max_size=5))
def test_waves_are_disjoint_and_cover_the_last_size(n, pcts):
    waves = tuple(WaveSpec(f"w{i}", percent=p) for i, p in enumerate(sorted(pcts)))
    ids = [f"d{i}" for i in range(n)]
    groups = assign_waves("s", ids, waves)
    flat = [d for g in groups for d in g]
    assert len(flat) == len(set(flat))
    assert len(flat) == wave_sizes(waves, n)[-1]
    if n and sorted(pcts)[-1] == 100:
        assert set(flat) == set(ids)
