"""Scale benchmark (issue 19): many device identities through the real Mosquitto into the real
fleet on PostgreSQL, with several ingest processes on one shared subscription.

    .venv/bin/python benchmarks/scale_bench.py [--devices 10000] [--window 10] [--duration 60]
        [--ingest 3] [--verify sample|all] [--sample-rate 0.05] [--batch-wait 1.0]

Load: every device identity has its own Ed25519 key and is enrolled; its windows are made by
the agent's own telemetry code (fleet.devsim: agent.sketches histograms, agent.keys signing),
signed before the clock starts and replayed at 1 window / device / `--window` seconds by one
publisher (QoS 1). Each window's `window.end` is its scheduled publish time, so the ingest lag
of a stored window is `received_at - sent_at` (the scheduled publish time), read from the database.

Measured: windows/s offered and stored, loss, p99 ingest lag (seconds and windows), CPU-seconds
per message for the ingest processes (their own process CPU), the same split by stage
(decode, verify, aggregate, store: client + PostgreSQL backend, each timed alone on a batch of
fresh messages; receive = the ingest processes' CPU per message minus the rest), bytes per
device-day of raw telemetry (partitions + indexes + TOAST) and of aggregates, and the p99 of
the device-list API at this fleet size. Canary stop time (benchmarks/scale_canary.py): during the
load a bad version is rolled out to the whole fleet; its 1% canary runs as live simulated agents,
and the table gives the windows from its first bad window to every canary device rolled back and
the devices outside the canary that got any command. Reconnection storm (benchmarks/scale_storm.py):
after the load every replayed device publishes its signed state at once, as after a broker restart;
the time until all are stored and the ingest processes' CPU for them.
Prints a table and writes benchmarks/out/scale_bench.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "benchmarks" / "out"
BATCH_WAIT_S = 1.0  # a writer batch fills for up to 1 s: the per-batch work is shared (docs/deploy.md, Sizing)
TARGETS = {"devices": 10000, "loss": 0, "lag_p99_windows": 1.0, "windows_per_ingest_cpu_s": 10000.0,
           "canary_stop_windows": 2.0}  # page budgets: PAGES


def _settings(url: str, fleet_id: str, verify: str, rate: float, batch_wait_s: float = BATCH_WAIT_S) -> Any:
    import tempfile

    from fleet.settings import FleetSettings

    s = FleetSettings(data_dir=Path(tempfile.gettempdir()) / "scale-bench-data", database_url=url,
                      fleet_id=fleet_id, mqtt_url="mqtt://127.0.0.1:1883", drift_interval_s=0,
                      api_tokens={"bench-token": "viewer"})
    s.ingest.shared_group = f"g{fleet_id}"
    s.ingest.device_cache_s = 3600
    s.ingest.batch_wait_s = batch_wait_s
    s.ingest.receive = "batched"  # QoS 1 publishes cut out of each read (docs/deploy.md, Sizing)
    s.ingest.verify, s.ingest.sample_rate = verify, rate
    return s


def _ingest_child(url: str, fleet_id: str, verify: str, rate: float, wait_s: float, i: int, ready: Any, stop: Any,
                  out: Any, end: Any) -> None:
    from fleet.db import make_engine
    from fleet.ingest.service import IngestService

    svc = IngestService(_settings(url, fleet_id, verify, rate, wait_s), make_engine(url), client_id=f"{fleet_id}-in{i}")
    svc.start(timeout=30)
    cpu0, threads0 = time.process_time(), thread_cpu()  # from subscribed to drained: the load period
    ready.set()
    stop.wait()
    svc.drain(30)
    cpu, threads = time.process_time() - cpu0, thread_cpu()
    snap = svc.stats.snapshot()
    by_thread = {k: [round(u - threads0.get(k, (0.0, 0.0))[0], 3), round(s - threads0.get(k, (0.0, 0.0))[1], 3)]
                 for k, (u, s) in threads.items()}
    out.put({**snap, "cpu_s": cpu, "stages": snap["cpu_s"], "threads": by_thread})
    end.wait(600)  # still subscribed for the reconnection storm (benchmarks/scale_storm.py)
    svc.stop()


def thread_cpu() -> dict[str, tuple[float, float]]:
    """(user, system) CPU seconds of each live thread of this process, by thread name (the
    verify pool's threads summed): where the CPU that no stage timer sees goes (system calls,
    GIL hand-offs, the heartbeat)."""
    import threading

    import psutil

    names = {t.native_id: t.name.split("_")[0] for t in threading.enumerate()}
    out: dict[str, tuple[float, float]] = {}
    for t in psutil.Process().threads():
        name = names.get(t.id, "other")
        u, s = out.get(name, (0.0, 0.0))
        out[name] = (u + t.user_time, s + t.system_time)
    return out


def make_windows(devs: list[Any], baseline: dict[str, Any], t0: float, window_s: float, per_device: int,
                 seq0: int = 0) -> list[tuple[float, str, bytes]]:
    """(scheduled publish time, topic, signed bytes), ordered by time: each device's windows
    from a pool of agent-made payloads (varying histograms), re-stamped and signed per device.
    Windows are aligned to multiples of window_s (the fleet aggregates per window start); the
    devices' publish times spread over the next window, and `sent_at` says when."""
    import math

    import numpy as np

    rng = np.random.default_rng(0)
    pool = [devs[0].telemetry(rng, baseline, n=200) for _ in range(32)]
    base = math.floor(t0 / window_s) * window_s
    out = []
    for k in range(per_device):
        for j, d in enumerate(devs):
            start = base + k * window_s
            at = max(t0, start + window_s) + 0.9 * window_s * j / len(devs)
            p = dict(pool[(j + k) % len(pool)], device=d.device_id, fleet=d.fleet, seq=seq0 + k + 1, sent_at=at,
                     window={"start": start, "end": start + window_s, "seconds": window_s})
            out.append((at, d.topic("telemetry"), d.sign(p)))
    out.sort(key=lambda m: m[0])
    return out


def publish(msgs: list[tuple[float, str, bytes]], fleet_id: str) -> float:
    """Publish each message at its scheduled time (QoS 1); returns the worst lateness, s."""
    from fleet.devsim import MqttPublisher

    pub = MqttPublisher("127.0.0.1", 1883, f"{fleet_id}-pub")
    late = 0.0
    for i, (at, t, raw) in enumerate(msgs):
        wait = at - time.time()
        if wait > 0:
            time.sleep(wait)
        else:
            late = max(late, -wait)
        pub.publish(t, raw)
        if i % 2000 == 1999:
            pub.flush()
    pub.flush()
    pub.close()
    return late


def stage_costs(url: str, settings: Any, devs: list[Any], baseline: dict[str, Any], n: int = 3000) -> dict[str, float]:
    """The parse stage split (CPU-seconds per message), each timed alone over fresh windows: decode
    and shape check (one pass, agent.window_schema.decode_wire; the key id looked up), signature
    check; and PostgreSQL's backend CPU per stored window."""
    import psutil
    from sqlalchemy import create_engine, text

    from fleet.db import json_dumps
    from fleet.ingest.device_cache import DeviceCache
    from fleet.ingest.service import tune_gc
    from fleet.ingest.store import Processor
    from fleet.ingest.verification import decode_telemetry, open_signed

    tune_gc()  # as in an ingest process: timed without the young collections every few messages
    msgs = make_windows(devs[:n], baseline, time.time(), 10.0, 1, seq0=10**6)[:n]
    engine = create_engine(url, json_serializer=json_dumps, pool_size=1, max_overflow=0)
    cache = DeviceCache(settings, engine)
    infos = cache.lookup(m[1].split("/")[3] for m in msgs)
    raws = [(t.split("/")[3], raw) for _, t, raw in msgs]

    def cpu(fn: Any) -> tuple[float, Any]:
        c0 = time.process_time()
        r = fn()
        return (time.process_time() - c0) / len(raws), r

    decode, _ = cpu(lambda: [open_signed(raw, infos[d].keyring, False, decode_telemetry) for d, raw in raws])
    checked, _ = cpu(lambda: [open_signed(raw, infos[d].keyring, True, decode_telemetry) for d, raw in raws])
    proc = Processor(settings, engine)
    parsed = proc.parse_many([(t, raw) for _, t, raw in msgs])
    with engine.connect() as c:
        backend = psutil.Process(int(c.execute(text("SELECT pg_backend_pid()")).scalar()))
    b0 = sum(backend.cpu_times()[:2])
    for i in range(0, len(parsed), 500):
        proc.store(parsed[i:i + 500])
    store_db = (sum(backend.cpu_times()[:2]) - b0) / len(raws)
    engine.dispose()
    rate = settings.ingest.sample_rate if settings.ingest.verify == "sample" else 1.0
    verify = max(0.0, checked - decode)
    return {"decode_and_check": decode, "verify_all": verify, "verify_effective": rate * verify,
            "store_db": store_db}


# (label, path, p99 budget ms): the device list and detail API (issue 19), the console's pages
# (issue 18's 200 ms) and drift over the live aggregates, at this fleet size with its telemetry
PAGES = (("API device list", "/api/devices?limit=50", 100.0), ("API device list filtered", "/api/devices?q=07&limit=50", 100.0),
         ("API device detail", "/api/devices/{device}", 100.0), ("API drift (digits v1)", "/api/models/digits/versions/1/drift", 200.0),
         ("console overview", "/console/", 200.0), ("console devices", "/console/devices", 200.0),
         ("console device", "/console/devices/{device}", 200.0), ("console telemetry series", "/console/series?model=digits&version=1", 200.0),
         ("console alerts", "/console/alerts", 200.0))


def api_p99_ms(settings: Any, device_ids: list[str], n: int = 40) -> dict[str, Any]:
    """p99 server time of each PAGES entry (None with the status when a page does not answer 200,
    e.g. drift without a registered version)."""
    from fleet.app import create_app

    client = create_app(settings).test_client()
    h = {"Authorization": "Bearer bench-token"}
    out: dict[str, Any] = {}
    for name, path, _ in PAGES:
        path = path.format(device=device_ids[len(device_ids) // 2])
        status = client.get(path, headers=h).status_code
        if status != 200:
            out[name] = f"HTTP {status}"
            continue
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            client.get(path, headers=h)
            ts.append((time.perf_counter() - t) * 1000)
        out[name] = round(sorted(ts)[int(0.99 * (n - 1))], 1)
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10000)
    ap.add_argument("--window", type=float, default=10.0, help="seconds between a device's windows")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    ap.add_argument("--ingest", type=int, default=3, help="ingest processes on the shared subscription")
    ap.add_argument("--verify", choices=["sample", "all"], default="sample")
    ap.add_argument("--sample-rate", type=float, default=0.05)
    ap.add_argument("--batch-wait", type=float, default=BATCH_WAIT_S, help="ingest.batch_wait_s of the ingest processes")
    ap.add_argument("--no-stages", dest="stages", action="store_false", help="skip the per-stage and API timing")
    ap.add_argument("--no-canary", dest="canary", action="store_false", help="skip the bad-version canary rollout")
    ap.add_argument("--no-storm", dest="storm", action="store_false", help="skip the reconnection storm of states")
    ap.add_argument("--out", default=str(OUT / "scale_bench.json"))
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.fleet_bench import _pg_up
    from fleet.ingest.broker import reachable

    args = parse(argv)
    if not (_pg_up() and reachable("127.0.0.1", 1883)):
        print("scale_bench needs PostgreSQL at 127.0.0.1:5432 and Mosquitto at 127.0.0.1:1883")
        return 2
    result = run(args)
    print_table(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    ok = result["loss"] == 0 and result["lag_p99_windows"] < TARGETS["lag_p99_windows"]
    c = result.get("canary") or {}
    ok = ok and (not c or (c.get("devices_outside_canary_commanded") == 0
                           and (c.get("windows_to_rolled_back") or 99) <= TARGETS["canary_stop_windows"]))
    return 0 if ok else 1


def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.fleet_bench import BenchDB
    from benchmarks.fleet_bench import _cpu_by_command as cpu_by_command
    from benchmarks.fleet_bench import _enrol_devices as enrol_devices
    from benchmarks.scale_canary import Canary
    from benchmarks.scale_storm import reconnect_storm
    from fleet.devsim import SimDevice, make_baseline

    fleet_id = f"scale{int(time.time()) % 10**6}"
    db = BenchDB("postgres")
    url = db.fresh_url()
    settings = _settings(url, fleet_id, args.verify, args.sample_rate, args.batch_wait)
    baseline = make_baseline(seed=2, n_features=16)
    devs = [SimDevice(f"{fleet_id}-{i:05d}", fleet=fleet_id) for i in range(args.devices)]
    enrol_devices(url, fleet_id, devs)
    live: set[str] = set()
    per_device = max(1, int(args.duration // args.window))
    canary = Canary(url, fleet_id, devs, args.window) if args.canary else None
    ctx = mp.get_context("spawn")
    stop, out, end = ctx.Event(), ctx.Queue(), ctx.Event()
    readies = [ctx.Event() for _ in range(args.ingest)]
    procs = [ctx.Process(target=_ingest_child, args=(url, fleet_id, args.verify, args.sample_rate, args.batch_wait, i,
                                                     readies[i], stop, out, end)) for i in range(args.ingest)]
    m: dict[str, Any] = {"per_device": per_device}
    try:
        for p in procs:
            p.start()
        for r in readies:
            if not r.wait(90):
                raise RuntimeError("an ingest process did not subscribe")
        if canary is not None:
            live = set(canary.start().ids)
        msgs, m["gen_s"] = _signed_load([d for d in devs if d.device_id not in live], baseline, args.window,
                                        per_device)
        if canary is not None:
            canary.run_in_background(start_after_s=2.5 * args.window)
        cpu_before = cpu_by_command()
        m["late"] = publish(msgs, fleet_id)
        m["offered"], m["stored"] = len(msgs), _wait_stored(url, len(msgs), live)
        m["drain_s"] = time.time() - msgs[-1][0]
        m["canary"] = canary.finish(timeout=15 * args.window) if canary is not None else None
        cpu_after = cpu_by_command()
        stop.set()
        children = [out.get(timeout=60) for _ in procs]
        if args.storm:
            m["storm"] = reconnect_storm(url, fleet_id, [d for d in devs if d.device_id not in live],
                                         [p.pid for p in procs])
    finally:
        stop.set()
        end.set()
        if canary is not None:
            canary.stop()
        for p in procs:
            p.join(30)
    m["pg_cpu"] = sum(c - cpu_before.get(pid, (n, 0.0))[1] for pid, (n, c) in cpu_after.items() if n == "postgres")
    m.update(_db_figures(url))
    stages = stage_costs(url, settings, devs, baseline) if args.stages else dict.fromkeys(
        ("decode_and_check", "verify_all", "verify_effective", "store_db"), 0.0)
    api = api_p99_ms(settings, [d.device_id for d in devs]) if args.stages else {}
    db.close()
    return _report(args, m, children, stages, api)


def _signed_load(load: list[Any], baseline: dict[str, Any], window_s: float, per_device: int
                 ) -> tuple[list[tuple[float, str, bytes]], float]:
    """The replayed windows, signed after ingest is up; the first is scheduled after the signing
    is done (its speed measured on a sample first: a loaded host signs several times slower)."""
    t_gen = time.perf_counter()
    make_windows(load[:200], baseline, time.time(), window_s, per_device)
    lead = 2 + 1.5 * (time.perf_counter() - t_gen) / (min(200, len(load)) * per_device) * len(load) * per_device
    msgs = make_windows(load, baseline, time.time() + lead, window_s, per_device)
    return msgs, time.perf_counter() - t_gen


def _wait_stored(url: str, offered: int, live: set[str]) -> int:
    """Replayed windows stored, waited for while ingest still makes progress (20 s without: lost)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    stored, progress = 0, time.time()
    replayed = text("SELECT count(*) FROM telemetrywindow WHERE NOT (device_id = ANY(:live))")
    with engine.connect() as c:
        while stored < offered and time.time() - progress < 20:
            time.sleep(0.5)
            n = c.execute(replayed, {"live": sorted(live)}).scalar() or 0
            if n > stored:
                stored, progress = n, time.time()
    engine.dispose()
    return stored


def _db_figures(url: str) -> dict[str, Any]:
    from sqlalchemy import create_engine, text

    from fleet.ingest import partitions

    engine = create_engine(url)
    with engine.connect() as c:
        lag = c.execute(text("SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY received_at - sent), max(received_at "
                             "- sent) FROM (SELECT received_at, (payload->>'sent_at')::float8 AS sent "
                             "FROM telemetrywindow) w")).one()
        out = {"lag_p99": float(lag[0] or 0), "lag_max": float(lag[1] or 0), "raw_bytes": partitions.table_bytes(c),
               "agg_bytes": int(c.execute(text("SELECT pg_total_relation_size('aggregate')")).scalar() or 0),
               "parts": len(partitions.existing(c))}
    engine.dispose()
    return out


def _report(args: argparse.Namespace, m: dict[str, Any], children: list[dict[str, Any]], stages: dict[str, float],
            api: dict[str, float]) -> dict[str, Any]:
    ingest_cpu = sum(ch["cpu_s"] for ch in children)
    windows = sum(ch["stored"].get("telemetry", 0) for ch in children)  # replayed and canary windows
    per_msg = ingest_cpu / max(1, windows)
    measured = {k: sum(ch["stages"].get(k, 0.0) for ch in children) for k in ("parse", "aggregate", "store")}
    by_stage = {"receive (MQTT thread, hand-off; the rest)": ingest_cpu - sum(measured.values()), **measured}
    stored, secs = m["stored"], m["per_device"] * args.window
    return {
        "devices": args.devices, "window_s": args.window, "duration_s": secs,
        "ingest_processes": args.ingest, "verify": args.verify, "sample_rate": args.sample_rate,
        "batch_wait_s": args.batch_wait,
        "generate_s": round(m["gen_s"], 1), "publisher_max_late_s": round(m["late"], 3),
        "stored_by_s_after_last_publish": round(m["drain_s"], 1),
        "offered": m["offered"], "stored": stored, "loss": m["offered"] - stored,
        "offered_per_s": round(args.devices / args.window, 1), "stored_per_s": round(stored / secs, 1),
        "lag_p99_s": round(m["lag_p99"], 3), "lag_max_s": round(m["lag_max"], 3),
        "lag_p99_windows": round(m["lag_p99"] / args.window, 3),
        "ingest_cpu_s": round(ingest_cpu, 2), "ingest_cpu_per_msg_us": round(per_msg * 1e6, 1),
        "windows_per_ingest_cpu_s": round(1 / per_msg, 0) if per_msg else None,
        "ingest_windows": windows, "postgres_cpu_s_host": round(m["pg_cpu"], 2),
        "stage_us": {k: round(v / max(1, windows) * 1e6, 1) for k, v in by_stage.items()},
        "parse_split_us": {k: round(v * 1e6, 1) for k, v in stages.items() if k != "store_db"},
        "store_db_us": round(stages["store_db"] * 1e6, 1), "canary": m["canary"],
        "raw_bytes_per_window": round(m["raw_bytes"] / max(1, stored), 1),
        "raw_bytes_per_device_day": round(m["raw_bytes"] / max(1, stored) * 86400 / args.window),
        "aggregate_bytes_total": m["agg_bytes"], "partitions": m["parts"],
        "per_ingest_process": [{"cpu_s": round(ch["cpu_s"], 2), "stored": ch["stored"].get("telemetry", 0),
                                "stages_cpu_s": {k: round(v, 3) for k, v in ch["stages"].items()},
                                "duplicates": ch["duplicates"].get("telemetry", 0), "dropped": ch["dropped"],
                                "threads_user_sys_s": ch.get("threads", {})}
                               for ch in children],
        "api_p99_ms": api,  # ms, or "HTTP <status>" for a page that did not answer
        "reconnect_storm": m.get("storm"),
    }


def canary_rows(c: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    if not c:
        return []
    if "windows_to_rolled_back" not in c:
        return [("bad version at the canary", f"{c.get('status')}", "stopped")]
    return [(f"bad version: canary ({c['canary_devices']} devices) rolled back after",
             f"{c['windows_to_rolled_back']} windows (breach at {c['detect_windows']}; {c['gates']})",
             f"<= {TARGETS['canary_stop_windows']:g} windows"),
            ("bad version: devices outside the canary commanded", f"{c['devices_outside_canary_commanded']}", "0")]


def print_table(r: dict[str, Any]) -> None:
    from benchmarks.scale_storm import storm_rows

    rows = [
        ("devices", f"{r['devices']}", f"{TARGETS['devices']}"),
        ("windows offered / stored", f"{r['offered']} / {r['stored']}", "all"),
        ("windows/s offered / stored", f"{r['offered_per_s']} / {r['stored_per_s']}", ""),
        ("loss", f"{r['loss']}", "0"),
        ("ingest lag p99 (max)", f"{r['lag_p99_s']} s = {r['lag_p99_windows']} windows ({r['lag_max_s']} s)",
         "< 1 window"),
        (f"windows per ingest CPU-s ({r['verify']}, rate {r['sample_rate']}, batch wait {r.get('batch_wait_s')} s)",
         f"{r['windows_per_ingest_cpu_s']}", f"{TARGETS['windows_per_ingest_cpu_s']:.0f}"),
        ("ingest CPU per message", f"{r['ingest_cpu_per_msg_us']} us ({r['ingest_processes']} processes)", ""),
        *[(f"  stage {k}", f"{v} us", "") for k, v in r["stage_us"].items()],
        *[(f"    parse: {k} (timed alone)", f"{v} us", "") for k, v in r["parse_split_us"].items()],
        ("PostgreSQL backend CPU per stored window (timed alone)", f"{r['store_db_us']} us", ""),
        ("PostgreSQL CPU during load (host)", f"{r['postgres_cpu_s_host']} s", ""),
        *canary_rows(r.get("canary")),
        *storm_rows(r.get("reconnect_storm")),
        ("raw telemetry bytes / window", f"{r['raw_bytes_per_window']}", ""),
        (f"raw telemetry bytes / device-day (1 per {r['window_s']:.0f} s)", f"{r['raw_bytes_per_device_day']}", ""),
        ("aggregate table bytes (whole run)", f"{r['aggregate_bytes_total']}", ""),
        *[(f"p99 {k}", f"{v} ms" if isinstance(v, float) else str(v), f"{budget:.0f} ms")
          for (k, _, budget) in PAGES if (v := r["api_p99_ms"].get(k)) is not None],
    ]
    w = max(len(a) for a, _, _ in rows)
    print(f"{'scale_bench':<{w}}  {'measured':<44}  target")
    for a, b, c in rows:
        print(f"{a:<{w}}  {b:<44}  {c}")


if __name__ == "__main__":
    sys.exit(main())
