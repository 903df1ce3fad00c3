"""The overview's counts come from SQL (issue 18: pages under 200 ms at 10,000 devices) and
must equal what the old row-by-row Python computed, edge cases included: decommissioned
devices, no/empty device class, empty or missing installed model, never seen, seen long ago."""

from __future__ import annotations

import random
from collections import Counter

from sqlmodel import Session, select

from fleet.api.telemetry import overview_data
from fleet.db import init_db, make_engine
from fleet.models import Device, now


def python_counts(devices: list[Device], t: float) -> dict:
    active = [d for d in devices if d.status == "active"]
    return {
        "devices": {"total": len(devices), "active": len(active), "decommissioned": len(devices) - len(active),
                    "seen_last_5m": sum(1 for d in active if d.last_seen and t - d.last_seen < 300),
                    "by_class": dict(sorted(Counter(d.device_class or "unknown" for d in active).items()))},
        "installed": [{"model": m, "version": v, "devices": n} for (m, v), n in sorted(
            Counter((d.installed_name, d.installed_version) for d in active if d.installed_name).items())],
    }


def test_sql_counts_equal_the_row_by_row_counts(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    init_db(engine)
    rng = random.Random(7)
    t = now()
    with Session(engine) as s:
        for i in range(400):
            s.add(Device(id=f"d{i}", device_class=rng.choice(["", "arm64-pi4", "x86-64-generic"]),
                         status=rng.choice(["active", "active", "decommissioned"]),
                         last_seen=rng.choice([None, 0.0, t - 10, t - 200, t - 400, t - 86400]),
                         installed_name=rng.choice([None, "", "digits", "kws"]),
                         installed_version=rng.choice([1, 2, 3])))
        s.commit()
        got = overview_data(s)
        want = python_counts(list(s.exec(select(Device))), got_t := now())
    assert got_t - t < 60   # the 200 s / 400 s devices stay on their side of the 5 min line
    assert {k: got[k] for k in want} == want
    assert got["devices"]["decommissioned"] > 0 and "unknown" in got["devices"]["by_class"]
    assert 0 < got["devices"]["seen_last_5m"] < got["devices"]["active"]
    assert {i["model"] for i in got["installed"]} == {"digits", "kws"}
    engine.dispose()
