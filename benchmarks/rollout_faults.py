"""Rollouts under faults (issue 20): `rollout_bench.py --faults`.

Each run rolls a good version (waves 10/50/100 %) over a simulated fleet (tests/rollouts/
simdevice.py: the agent's protocol, signatures and sketches) on a private mosquitto and
PostgreSQL, with the fleet server in a child process, and injects one fault at a random moment:
the fleet killed with SIGKILL, restarted gracefully (SIGTERM), the broker down for 20 s, or one
of two evaluator processes (the lease holder) killed. A last scenario kills the fleet during a
bad version's canary. Measured: good versions completed (target 100%) with exactly one install
per device, bad versions stopped at the canary, telemetry windows lost (acknowledged by the
broker, never stored), and time to resume (fault start, or the broker's return, to the next
rollout tick by a live process / the end of the blind wait). Devices hold their telemetry until
an ingest worker is online (mqtt.hold_until_ingest, as enrolled); --no-hold measures without.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCENARIOS = ("fleet-kill9", "fleet-graceful-restart", "broker-down-20s", "evaluator-holder-killed",
             "bad-version-fleet-kill9")


def _database() -> tuple[str, Any]:
    """A scratch PostgreSQL database, as the rollout benchmark makes one."""
    from benchmarks.rollout_bench import make_database

    return make_database(False, Path(tempfile.gettempdir()))


def _ticked_by_other(w: Any, rid: int, holder: str) -> float | None:
    """When a process other than `holder` last ticked the rollout (None: not yet)."""
    r = w.rollout(rid)
    return r.last_tick_at if r.last_holder and r.last_holder != holder else None


def run_once(scenario: str, devices: int, window_s: float, rng: random.Random, tmp: Path,
             hold: bool = True) -> dict[str, Any]:
    from tests.rollouts.faultworld import FaultWorld
    from tests.rollouts.simdevice import Behaviour
    from tests.waiting import wait_for

    url, drop = _database()
    bad = scenario.startswith("bad")
    two_evaluators = scenario == "evaluator-holder-killed"
    w = FaultWorld(tmp, url, n_devices=devices, window_s=window_s, fleet_evaluator=not two_evaluators,
                   behaviours={3: Behaviour(drift=True)}, hold_until_ingest=hold)
    out: dict[str, Any] = {"scenario": scenario}
    try:
        if two_evaluators:
            w.start_evaluator("eval-a")
            w.start_evaluator("eval-b")
        version = 3 if bad else 2
        rid = w.create(version, (10, 50, 100), report_timeout_s=max(6.0, 6 * window_s))
        delay = rng.uniform(0.5, 4.0) if not bad else 0.0
        if bad:
            wait_for(lambda: any(t.status in ("commanded", "installed") for t in w.targets(rid)), 60, "canary")
        else:
            time.sleep(delay)
        t_fault = time.time()
        before = w.rollout(rid).last_holder
        if scenario in ("fleet-kill9", "bad-version-fleet-kill9", "fleet-graceful-restart"):
            w.restart_fleet(signal.SIGTERM if scenario == "fleet-graceful-restart" else signal.SIGKILL)
            resumed = wait_for(lambda: _ticked_by_other(w, rid, before) or
                               (time.time() if w.rollout(rid).status != "running" else None), 60, "resume")
        elif scenario == "broker-down-20s":
            w.broker.stop()
            time.sleep(20)
            w.broker.start()
            t_fault = time.time()

            def unblind() -> float | None:
                for wave in w.waves(rid):
                    for p in (wave.last_verdict or {}).get("blind") or []:
                        if p[1] is not None and p[1] >= t_fault:
                            return float(p[1])
                return None if w.rollout(rid).status == "running" else time.time()
            resumed = wait_for(unblind, 60, "the end of the blind wait")
        else:
            wait_for(lambda: w.rollout(rid).last_holder, 30, "a holder")
            holder = w.rollout(rid).last_holder
            t_fault = time.time()
            w.evaluators[holder].kill()
            resumed = wait_for(lambda: (r := w.rollout(rid)).last_holder != holder and r.last_tick_at or
                               w.rollout(rid).status != "running", 60, "takeover")
        out["resume_s"] = round(float(resumed) - t_fault, 2) if isinstance(resumed, float) else None
        r = w.wait_done(rid, 180)
        installs = Counter(c.device_id for c in w.commands(rid) if c.kind == "install")
        out["status"] = r.status
        out["ok"] = (r.status == "paused" and r.current_wave == 0) if bad else \
            (r.status == "completed" and set(installs.values()) == {1} and len(installs) == devices)
        out["max_installs_per_device"] = max(installs.values()) if installs else 0
        out["reason"] = (r.reason or {}).get("summary")
        out["windows_sent"] = len(w.devices.sent)
        out["windows_lost"] = w.windows_lost(20)
    finally:
        w.stop()
        drop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faults", action="store_true")
    ap.add_argument("--devices", type=int, default=40)
    ap.add_argument("--window", type=float, default=1.0, help="telemetry window, seconds")
    ap.add_argument("--repeat", type=int, default=2, help="runs per good-version scenario")
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--no-hold", action="store_true",
                    help="devices send without waiting for an online ingest (mqtt.hold_until_ingest = false)")
    ap.add_argument("--only", default="", help="comma-separated scenarios (default: all)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "rollout_faults.json"))
    args = ap.parse_args(argv)
    from tests.rollouts.faultworld import MOSQUITTO

    if MOSQUITTO is None:
        print("mosquitto is not installed")
        return 2
    rng = random.Random(args.seed)
    runs: list[dict[str, Any]] = []
    base = Path(tempfile.mkdtemp(prefix="rollout-faults-"))
    scenarios = [x for x in SCENARIOS if not args.only or x in args.only.split(",")]
    for scenario in scenarios:
        n = 1 if scenario in ("broker-down-20s", "bad-version-fleet-kill9") else args.repeat
        for i in range(n):
            res = run_once(scenario, args.devices, args.window, rng, base / f"{scenario}-{i}", hold=not args.no_hold)
            runs.append(res)
            print(f"  {scenario} #{i}: {res['status']} ok={res['ok']} resume {res['resume_s']} s, "
                  f"windows lost {res['windows_lost']}/{res['windows_sent']}", flush=True)
    rows = []
    for scenario in scenarios:
        rs = [r for r in runs if r["scenario"] == scenario]
        ok = sum(bool(r["ok"]) for r in rs)
        what = "bad version stopped at the canary" if scenario.startswith("bad") else "good completed, 1 install each"
        resume = [r["resume_s"] for r in rs if r["resume_s"] is not None]
        rows.append((scenario, what, f"{ok}/{len(rs)} ({100 * ok / len(rs):.0f}%)",
                     f"{sum(r['windows_lost'] for r in rs)}/{sum(r['windows_sent'] for r in rs)}",
                     f"{max(resume):.1f}" if resume else "-"))
    report = {"devices": args.devices, "window_s": args.window, "hold_until_ingest": not args.no_hold, "runs": runs,
              "table": [dict(zip(("fault", "expectation", "runs ok", "windows lost", "max resume s"), r,
                                 strict=True)) for r in rows]}
    print()
    print(f"{'fault':<26} {'expectation':<34} {'runs ok':<12} {'windows lost':<14} max resume s")
    for a, b, c, d, e in rows:
        print(f"{a:<26} {b:<34} {c:<12} {d:<14} {e}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {out}")
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
