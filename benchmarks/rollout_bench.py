"""Rollout benchmark: a simulated fleet of 1,000 devices on the real Mosquitto.

The devices are lightweight simulations (tests/rollouts/simdevice.py) that speak the agent's
protocol: they check every command with agent.protocol.CommandGuard and rollback approvals with
agent.bundle.RollbackApproval, and sign their state, events and telemetry with their own keys.
They run in a few processes, each multiplexing its devices over one paho client. The fleet side
is the real fleet server (HTTP, in-process ingest that verifies every signature, the rollout
evaluator publishing signed commands) on PostgreSQL (or SQLite with --sqlite).

Measured:
  bad versions (slower / error-prone / drifting predictions): time from the end of the first bad
  telemetry window to every canary device rolled back (confirmed by its own signed state), in
  telemetry windows; and how many devices outside the canary wave ever got the bad version.
  good version: time from creating the rollout to 100% of the fleet on it.

Usage: .venv/bin/python benchmarks/rollout_bench.py [--devices 1000] [--window 2] [--procs 4] [--sqlite]
Writes benchmarks/out/rollout_bench.json and prints a table with targets beside measured values.

With --faults it measures rollouts under injected faults instead (fleet kill -9, graceful
restart, broker down 20 s, evaluator holder killed; benchmarks/rollout_faults.py).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BAD_VERSIONS = {2: ("slower (3x latency)", {"latency_us": 6000.0}),
                3: ("error-prone (15% errors)", {"error_rate": 0.15}),
                4: ("drifting predictions", {"drift": True})}
GOOD_VERSION = 5
TARGET_WINDOWS = 2.0


# ------------------------------------------------------------------------------------------
# device processes


def device_process(devs: list[tuple[str, bytes, int]], fleet_pub: bytes, fleet: str, window_s: float,
                   behaviours: dict[int, dict[str, Any]], v1: dict[str, Any], stop: Any, ready: Any,
                   out: Any) -> None:
    """One process, one paho client, many simulated devices; reports what each device accepted."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    from agent.keys import Keyring
    from tests.rollouts.simdevice import Behaviour, SimDevice
    from tests.rollouts.simfleet import MqttSimFleet

    beh = {v: Behaviour(**b) for v, b in behaviours.items()}
    ring_pub = Ed25519PublicKey.from_public_bytes(fleet_pub)
    sims = [SimDevice(d, Ed25519PrivateKey.from_private_bytes(k), Keyring.from_public_keys([ring_pub]),
                      installed=dict(v1), fleet=fleet, behaviours=beh, seed=seed) for d, k, seed in devs]
    fleet_sim = MqttSimFleet(sims, fleet, window_s=window_s,
                             client_id=f"bench-{fleet}-{os.getpid()}").start(timeout=30)
    ready.set()
    stop.wait()
    fleet_sim.stop()
    out.put({s.device_id: {"accepted": [(c["kind"], (c.get("model") or {}).get("version")) for c in s.accepted],
                           "refused": list(s.refused), "installed": (s.installed or {}).get("version")}
             for s in sims})


# ------------------------------------------------------------------------------------------
# fleet side


def make_database(sqlite: bool, tmp: Path) -> tuple[str, Any]:
    if sqlite:
        return f"sqlite:///{tmp / 'bench.db'}", None
    from sqlalchemy import create_engine, text

    admin_url = os.environ.get("EDGEFLEET_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    name = f"edgefleet_rollout_bench_{os.getpid()}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        c.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as c:
            c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()

    return admin_url.rsplit("/", 1)[0] + "/" + name, drop


def wait_for(pred: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def main(argv: list[str] | None = None) -> int:
    if "--faults" in (sys.argv[1:] if argv is None else argv):
        from benchmarks.rollout_faults import main as faults_main

        return faults_main(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--window", type=float, default=2.0, help="telemetry window, seconds")
    ap.add_argument("--procs", type=int, default=4, help="device processes")
    ap.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "rollout_bench.json"))
    args = ap.parse_args(argv)

    import tempfile

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from sqlmodel import Session, select

    from agent.keys import generate_keypair, load_private_key, public_key_to_b64
    from fleet.ingest.broker import reachable
    from fleet.models import Device, TelemetryWindow
    from fleet.rollouts import service
    from fleet.rollouts.models import RolloutCommand, RolloutTarget, TargetStatusChange
    from fleet.server import FleetServer
    from fleet.settings import FleetSettings
    from tests.rollouts.harness import add_build

    if not reachable("127.0.0.1", 1883):
        print("Mosquitto is not running at 127.0.0.1:1883 (mosquitto -d -c /etc/mosquitto/mosquitto.conf)")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="rollout-bench-"))
    url, drop = make_database(args.sqlite, tmp)
    fleet_id = f"bench{uuid.uuid4().hex[:8]}"
    key_path, _ = generate_keypair(tmp / "keys", "fleet")
    fleet_key = load_private_key(key_path)
    w = args.window
    settings = FleetSettings(data_dir=tmp / "fleet", database_url=url, mqtt_url="mqtt://127.0.0.1:1883",
                             fleet_id=fleet_id, signing_key_path=key_path, embedded_broker=False,
                             start_rollouts=True, rollout_interval_s=w / 4)
    settings.ingest.device_cache_s = 600.0
    srv = FleetServer(settings, port=0, drift_evaluator=False).start()
    print(f"fleet {fleet_id}: {args.devices} devices in {args.procs} processes, window {w}s, "
          f"{'SQLite' if args.sqlite else 'PostgreSQL'}", flush=True)
    ctx = mp.get_context("spawn")
    stop, results = ctx.Event(), ctx.Queue()
    procs: list[Any] = []
    report: dict[str, Any] = {"devices": args.devices, "window_s": w, "database": "sqlite" if args.sqlite
                              else "postgresql", "processes": args.procs, "bad": [], "good": None}
    try:
        with Session(srv.engine) as s:
            v1 = add_build(s, 1)
            for v in (*BAD_VERSIONS, GOOD_VERSION):
                add_build(s, v)
            devs = []
            for i in range(args.devices):
                k = Ed25519PrivateKey.generate()
                d = f"{fleet_id}-{i:05d}"
                s.add(Device(id=d, fleet=fleet_id, device_class="x86-64-generic",
                             public_key=public_key_to_b64(k.public_key())))
                devs.append((d, k.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                serialization.NoEncryption()), i))
            s.commit()
            v1ref = {"name": "digits", "version": 1, "manifest_sha256": v1.manifest_sha256,
                     "bundle_sha256": v1.bundle_sha256}
        pub = fleet_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        behaviours = {v: b for v, (_, b) in BAD_VERSIONS.items()}
        readies = []
        for p in range(args.procs):
            ready = ctx.Event()
            proc = ctx.Process(target=device_process, args=(devs[p::args.procs], pub, fleet_id, w, behaviours, v1ref,
                                                            stop, ready, results), daemon=True)
            proc.start()
            procs.append(proc)
            readies.append(ready)
        for r in readies:
            if not r.wait(120):
                raise TimeoutError("device processes did not start")

        def on_v(version: int) -> int:
            with Session(srv.engine) as s:
                return len(s.exec(select(Device.id).where(Device.fleet == fleet_id,
                                                          Device.installed_version == version)).all())
        wait_for(lambda: on_v(1) == args.devices, 120, "every device's first signed state")
        # let every device send a couple of v1 windows: the previous version's latency reference
        time.sleep(2.5 * w)
        spec_gates = {"report_timeout_s": 6 * w, "min_requests": 200, "min_windows": 1, "soak_s": 0}
        waves = [{"name": f"{p}pct", "percent": p} for p in (1, 10, 50, 100)]

        def create(version: int) -> int:
            with Session(srv.engine) as s:
                r = service.create_rollout(s, {"model_name": "digits", "version": version,
                                               "target": {"fleet": fleet_id}, "gates": spec_gates,
                                               "waves": waves}, "bench")
                s.commit()
                return r.id

        for version, (label, _) in BAD_VERSIONS.items():
            t0 = time.time()
            rid = create(version)
            r = wait_for(lambda rid=rid: (x := srv_rollout(srv, rid)).status in ("paused", "completed") and x,
                         60 * w + 60, f"bad v{version} stopped")
            with Session(srv.engine) as s:
                canary = [t.device_id for t in s.exec(select(RolloutTarget).where(RolloutTarget.rollout_id == rid,
                                                                                  RolloutTarget.wave_index == 0))]

            def all_back(rid: int = rid) -> bool:
                with Session(srv.engine) as s:
                    ts = s.exec(select(RolloutTarget).where(RolloutTarget.rollout_id == rid,
                                                            RolloutTarget.wave_index == 0)).all()
                    return all(t.status == "rolled-back" for t in ts)
            wait_for(all_back, 30 * w + 30, "canary rolled back")
            with Session(srv.engine) as s:
                first_bad = min(x.window_end for x in s.exec(select(TelemetryWindow).where(
                    TelemetryWindow.device_id.in_(canary), TelemetryWindow.model_version == version)))
                back_at = max(h.at for h in s.exec(select(TargetStatusChange).where(
                    TargetStatusChange.rollout_id == rid, TargetStatusChange.to_status == "rolled-back")))
                cmds = s.exec(select(RolloutCommand).where(RolloutCommand.rollout_id == rid)).all()
                outside = sorted({c.device_id for c in cmds if c.kind == "install"} - set(canary))
                breach_at = r.reason["at"] if r.reason else None
                service.abort(s, rid, "bench")
                s.commit()
            entry = {"version": version, "kind": label, "status": r.status, "canary_devices": len(canary),
                     "gates": [g["gate"] for g in (r.reason or {}).get("gates", [])],
                     "first_bad_window_end": first_bad, "breach_at": breach_at, "all_rolled_back_at": back_at,
                     "detect_windows": round((breach_at - first_bad) / w, 2) if breach_at else None,
                     "windows_to_rolled_back": round((back_at - first_bad) / w, 2),
                     "seconds_from_create": round(back_at - t0, 2),
                     "devices_outside_canary_commanded": len(outside), "canary": canary}
            report["bad"].append(entry)
            print(f"  bad v{version} ({label}): stopped by {entry['gates']}, canary {len(canary)} devices rolled back "
                  f"{entry['windows_to_rolled_back']} windows after the first bad window", flush=True)
            wait_for(lambda: on_v(1) == args.devices, 30, "fleet back on v1")

        t0 = time.time()
        rid = create(GOOD_VERSION)
        r = wait_for(lambda: (x := srv_rollout(srv, rid)).status in ("paused", "completed") and x, 120 * w + 120,
                     "good version completed")
        done = (r.completed_at or time.time()) - t0
        if r.status == "completed":
            wait_for(lambda: on_v(GOOD_VERSION) == args.devices, 30, "every device on the good version")
        else:
            print(f"  good v{GOOD_VERSION} did not complete: {(r.reason or {}).get('summary')}", flush=True)
        with Session(srv.engine) as s:
            installs = Counter(c.device_id for c in s.exec(select(RolloutCommand).where(
                RolloutCommand.rollout_id == rid, RolloutCommand.kind == "install")))
        report["good"] = {"version": GOOD_VERSION, "status": r.status, "seconds_to_100pct": round(done, 2),
                          "windows_to_100pct": round(done / w, 2), "devices_on_version": on_v(GOOD_VERSION),
                          "install_commands": sum(installs.values()), "max_installs_per_device":
                          max(installs.values()) if installs else 0,
                          "reason": r.reason}
        print(f"  good v{GOOD_VERSION}: {r.status} in {done:.1f}s = {done / w:.1f} windows", flush=True)
    finally:
        stop.set()
        device_reports: dict[str, Any] = {}
        for _ in procs:
            try:
                device_reports.update(results.get(timeout=60))
            except Exception:  # noqa: BLE001 - report what we have
                break
        for p in procs:
            p.join(10)
        srv.stop()
        if drop is not None:
            drop()
    bad_versions = set(BAD_VERSIONS)
    got_bad = {d for d, rep in device_reports.items()
               if any(k == "install" and v in bad_versions for k, v in rep["accepted"])}
    all_canaries = {d for b in report["bad"] for d in b["canary"]}
    report["device_side"] = {"devices_reporting": len(device_reports),
                             "devices_that_ever_accepted_a_bad_install": len(got_bad),
                             "of_which_outside_a_canary_wave": len(got_bad - all_canaries),
                             "refused_commands": sum(len(r["refused"]) for r in device_reports.values())}
    rows = []
    for b in report["bad"]:
        rows.append((f"bad v{b['version']} {b['kind']}: first bad window -> canary rolled back",
                     f"<= {TARGET_WINDOWS:g} windows",
                     f"{b['windows_to_rolled_back']} windows (breach at {b['detect_windows']})",
                     b["windows_to_rolled_back"] <= TARGET_WINDOWS))
        rows.append((f"bad v{b['version']}: devices outside the canary commanded", "0",
                     str(b["devices_outside_canary_commanded"]), b["devices_outside_canary_commanded"] == 0))
    outside = report["device_side"]["of_which_outside_a_canary_wave"]
    rows.append(("device side: bad version accepted outside a canary wave", "0",
                 f"{outside} (of {len(got_bad)} that ran it)", outside == 0 and len(device_reports) == args.devices))
    g = report["good"] or {}
    rows.append(("good version: time to 100% of the fleet", "all devices, 4 waves",
                 f"{g.get('seconds_to_100pct')} s = {g.get('windows_to_100pct')} windows "
                 f"({g.get('devices_on_version')}/{args.devices})",
                 g.get("status") == "completed" and g.get("devices_on_version") == args.devices))
    rows.append(("good version: install commands per device", "exactly 1",
                 str(g.get("max_installs_per_device")), g.get("max_installs_per_device") == 1))
    rows.append(("commands refused by devices (forged/replayed/stale)", "0",
                 str(report["device_side"]["refused_commands"]), report["device_side"]["refused_commands"] == 0))
    report["table"] = [{"metric": a, "target": b, "measured": c, "ok": d} for a, b, c, d in rows]
    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'metric':<{width}}  {'target':<22}  {'measured':<40}  ok")
    for a, b, c, d in rows:
        print(f"{a:<{width}}  {b:<22}  {c:<40}  {'yes' if d else 'NO'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {out}")
    return 0 if all(r[3] for r in rows) else 1


def srv_rollout(srv: Any, rid: int) -> Any:
    from sqlmodel import Session

    from fleet.rollouts.models import Rollout

    with Session(srv.engine) as s:
        return s.get(Rollout, rid)


if __name__ == "__main__":
    raise SystemExit(main())
