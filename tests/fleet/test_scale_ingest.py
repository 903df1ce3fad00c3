"""Scale-out (issue 19 item 4) at a small scale: three ingest processes on one shared
subscription of the real Mosquitto, PostgreSQL, sampled verification, windows made and signed
by the agent's own code (benchmarks/scale_bench.py's load generator). Every window offered is
stored exactly once and every process takes a share."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_three_ingest_processes_lose_nothing(broker, pg_database) -> None:  # type: ignore[no-untyped-def]
    from benchmarks import scale_bench

    args = scale_bench.parse(["--devices", "150", "--window", "2", "--duration", "4", "--ingest", "3",
                              "--no-stages", "--out", "/dev/null"])
    r = scale_bench.run(args)
    assert r["offered"] == 300 and r["stored"] == 300 and r["loss"] == 0
    per = r["per_ingest_process"]
    assert len(per) == 3 and sum(p["stored"] for p in per) == 300
    assert all(p["stored"] > 0 for p in per)  # the shared subscription really splits the load
    assert all(p["duplicates"] == 0 and not p["dropped"] for p in per)
    assert r["partitions"] >= 5  # today, yesterday and three days ahead
