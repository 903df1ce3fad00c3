"""The reconnection storm part of benchmarks/scale_bench.py (issue 19): after a broker restart every
agent reconnects and republishes its signed state at once, and every ingest process stores every
state (states are subscribed directly, not through the shared subscription). Measured after the
load, on the same ingest processes: the time until every device's state is stored and the ingest
processes' CPU for it (from /proc, so it is not mixed into the per-window figures)."""

from __future__ import annotations

import time
from typing import Any

STORM_SEQ = 10**9  # above every seq the load used: each state is newer than what the device row holds
INSTALLED = {"name": "digits", "version": 1, "manifest_sha256": "0" * 64, "bundle_sha256": "1" * 64}


def reconnect_storm(url: str, fleet_id: str, devs: list[Any], ingest_pids: list[int]) -> dict[str, Any]:
    """Every device in `devs` publishes one signed state (QoS 1, as fast as one publisher can);
    returns states offered and stored, seconds until stored, and the ingest processes' CPU."""
    from sqlalchemy import create_engine, text

    from benchmarks.fleet_bench import _cpu_by_command as cpu_by_command
    from fleet.devsim import MqttPublisher

    msgs = []
    for d in devs:
        p = d.state(installed=INSTALLED)  # an install change (audited): the costlier case
        p["seq"] = STORM_SEQ
        msgs.append((d.topic("state"), d.sign(p)))
    engine = create_engine(url)
    count = text("SELECT count(*) FROM device WHERE state_seq = :seq")
    before = cpu_by_command()
    t0 = time.perf_counter()
    pub = MqttPublisher("127.0.0.1", 1883, f"{fleet_id}-storm")
    for t, raw in msgs:
        pub.publish(t, raw)
    pub.flush(60)
    pub.close()
    stored, progress = 0, time.perf_counter()
    with engine.connect() as c:
        while stored < len(msgs) and time.perf_counter() - progress < 20:
            time.sleep(0.2)
            n = c.execute(count, {"seq": STORM_SEQ}).scalar() or 0
            if n > stored:
                stored, progress = n, time.perf_counter()
    secs = progress - t0
    after = cpu_by_command()
    engine.dispose()
    cpu = sum(after[p][1] - before[p][1] for p in ingest_pids if p in before and p in after)
    n_proc = max(1, len(ingest_pids))
    return {"states": len(msgs), "stored": int(stored), "seconds": round(secs, 2), "ingest_cpu_s": round(cpu, 2),
            "us_per_state_per_process": round(cpu / max(1, len(msgs)) / n_proc * 1e6, 1)}


def storm_rows(s: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    if not s:
        return []
    return [("reconnect storm: device states stored / offered", f"{s['stored']} / {s['states']} in {s['seconds']} s",
             "all"),
            ("reconnect storm: ingest CPU (all processes store every state)",
             f"{s['ingest_cpu_s']} s = {s['us_per_state_per_process']} us per state per process", "")]
