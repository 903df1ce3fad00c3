"""Scale-out (issue 19 item 4) at a small scale: three ingest processes on one shared
subscription of the real Mosquitto, PostgreSQL, sampled verification, windows made and signed
by the agent's own code (benchmarks/scale_bench.py's load generator). Every window offered is
stored exactly once and every process takes a share; after it, every device's state at once
(the reconnection storm) is stored."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_three_ingest_processes_lose_nothing(broker, pg_database) -> None:  # type: ignore[no-untyped-def]
    from benchmarks import scale_bench

    args = scale_bench.parse(["--devices", "150", "--window", "2", "--duration", "4", "--ingest", "3",
                              "--no-stages", "--no-canary", "--out", "/dev/null"])
    r = scale_bench.run(args)
    assert r["offered"] == 300 and r["stored"] == 300 and r["loss"] == 0
    per = r["per_ingest_process"]
    assert len(per) == 3 and sum(p["stored"] for p in per) == 300
    assert all(p["stored"] > 0 for p in per)  # the shared subscription really splits the load
    assert all(p["duplicates"] == 0 and not p["dropped"] for p in per)
    # CPU by stage, measured in the ingest processes themselves: every stage ran, receive included
    assert all(p["stages_cpu_s"]["parse"] > 0 and p["stages_cpu_s"]["store"] > 0 for p in per)
    assert r["stage_us"]["receive (MQTT thread, hand-off; the rest)"] > 0
    # and by thread ([user, system] CPU-s; clock ticks, so a short run may read 0): every ingest thread named
    assert all({"edgefleet-ingest-writer", "edgefleet-ingest-store", "edgefleet-ingest-heartbeat"}
               <= p["threads_user_sys_s"].keys() for p in per)
    assert sum(sum(sum(v) for v in p["threads_user_sys_s"].values()) for p in per) > 0
    assert r["batch_wait_s"] == scale_bench.BATCH_WAIT_S
    assert r["partitions"] >= 5  # today, yesterday and three days ahead
    # the reconnection storm: every device's signed state, stored by each of the three processes
    storm = r["reconnect_storm"]
    assert storm["states"] == storm["stored"] == 150 and storm["ingest_cpu_s"] > 0


def test_a_bad_version_under_load_is_stopped_at_the_canary(broker, pg_database) -> None:  # type: ignore[no-untyped-def]
    """scale_bench's canary: the 1% canary runs as live simulated agents while the rest of the
    fleet is replayed load; the bad version is rolled back there and nobody else is commanded."""
    from benchmarks import scale_bench

    args = scale_bench.parse(["--devices", "200", "--window", "2", "--duration", "16", "--ingest", "2",
                              "--batch-wait", "0.5", "--no-stages", "--no-storm", "--out", "/dev/null"])  # 2 s windows: a short wait
    r = scale_bench.run(args)
    c = r["canary"]
    assert c["status"] == "paused" and c["canary_as_planned"] and c["canary_devices"] == 2, c
    assert c["devices_outside_canary_commanded"] == 0
    assert 0 < c["windows_to_rolled_back"] <= 4  # the target is 2; slack for a loaded test machine
    assert r["loss"] == 0 and r["offered"] == 198 * 8
