"""The canary part of benchmarks/scale_bench.py (issue 19): a bad version rolled out to the
10,000-device fleet while the load runs, stopped at the canary.

The rollout's wave assignment is deterministic (fleet.rollouts.assignment), so the canary (wave 0,
1%) is known before the rollout starts: those devices run as live simulated agents
(tests/rollouts/simdevice.py via rollout_bench.device_process: they check every command's
signature, install, and send their own signed state, events and windows), the rest of the fleet
is the replayed load. The fleet side is the real fleet server (rollout evaluator signing
commands; its own ingest off: the benchmark's ingest processes store everything) on the same
PostgreSQL. Measured as in rollout_bench: windows from the end of the first bad window to every
canary device rolled back (confirmed by its signed state), and install commands sent to devices
outside the canary.
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BAD_VERSION, BAD = 2, {"latency_us": 6000.0}  # 3x the latency of v1 on the same devices
WAVES = [{"name": f"{p}pct", "percent": p} for p in (1, 10, 50, 100)]
TARGET_WINDOWS = 2.0


def canary_ids(device_ids: list[str]) -> list[str]:
    from fleet.rollouts.assignment import assign_waves
    from fleet.rollouts.spec import WaveSpec

    return assign_waves(f"digits:{BAD_VERSION}", device_ids, [WaveSpec(**w) for w in WAVES])[0]


class Canary:
    """Fleet server + live canary devices; run() in a thread during the load."""

    def __init__(self, url: str, fleet_id: str, devs: list[Any], window_s: float) -> None:
        self.url, self.fleet_id, self.w = url, fleet_id, window_s
        self.ids = canary_ids([d.device_id for d in devs])
        wanted = set(self.ids)
        self.devs = [d for d in devs if d.device_id in wanted]
        self.result: dict[str, Any] = {"canary_devices": len(self.ids), "status": "not run"}
        self._procs: list[Any] = []
        self._stop: Any = None
        self.srv: Any = None
        self.thread: threading.Thread | None = None

    def start(self) -> Canary:
        from cryptography.hazmat.primitives import serialization
        from sqlmodel import Session

        from agent.keys import generate_keypair, load_private_key
        from benchmarks.rollout_bench import device_process
        from fleet.server import FleetServer
        from fleet.settings import FleetSettings
        from tests.rollouts.harness import add_build

        tmp = Path(tempfile.mkdtemp(prefix="scale-canary-"))
        key_path, _ = generate_keypair(tmp / "keys", "fleet")
        settings = FleetSettings(data_dir=tmp / "fleet", database_url=self.url, mqtt_url="mqtt://127.0.0.1:1883",
                                 fleet_id=self.fleet_id, signing_key_path=key_path, embedded_broker=False,
                                 start_rollouts=True, rollout_interval_s=self.w / 4)
        self.srv = FleetServer(settings, port=0, start_ingest=False, drift_evaluator=False).start()
        with Session(self.srv.engine) as s:
            v1 = add_build(s, 1)
            add_build(s, BAD_VERSION)
            s.commit()
            v1ref = {"name": "digits", "version": 1, "manifest_sha256": v1.manifest_sha256,
                     "bundle_sha256": v1.bundle_sha256}
        raw = (serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        devs = [(d.device_id, d.key.private_bytes(*raw), i) for i, d in enumerate(self.devs)]
        pub = load_private_key(key_path).public_key().public_bytes(serialization.Encoding.Raw,
                                                                   serialization.PublicFormat.Raw)
        ctx = mp.get_context("spawn")
        self._stop, self._out, ready = ctx.Event(), ctx.Queue(), ctx.Event()
        p = ctx.Process(target=device_process, args=(devs, pub, self.fleet_id, self.w, {BAD_VERSION: BAD}, v1ref,
                                                     self._stop, ready, self._out), daemon=True)
        p.start()
        self._procs.append(p)
        if not ready.wait(120):
            raise TimeoutError("canary devices did not start")
        return self

    def run_in_background(self, start_after_s: float) -> None:
        self.thread = threading.Thread(target=self._run_safe, args=(start_after_s,), daemon=True)
        self.thread.start()

    def _run_safe(self, start_after_s: float) -> None:
        try:
            self._run(start_after_s)
        except Exception as exc:  # noqa: BLE001 - reported in the table, never a traceback
            self.result.update(status=f"failed: {type(exc).__name__}: {exc}")

    def _run(self, start_after_s: float) -> None:
        from sqlmodel import Session, select

        from benchmarks.rollout_bench import srv_rollout, wait_for
        from fleet.models import TelemetryWindow
        from fleet.rollouts import service
        from fleet.rollouts.models import RolloutCommand, RolloutTarget, TargetStatusChange

        time.sleep(start_after_s)  # the canary devices' v1 windows first: the reference
        gates = {"report_timeout_s": 6 * self.w, "min_requests": 200, "min_windows": 1, "soak_s": 0}
        with Session(self.srv.engine) as s:
            rid = service.create_rollout(s, {"model_name": "digits", "version": BAD_VERSION,
                                             "target": {"fleet": self.fleet_id}, "gates": gates, "waves": WAVES},
                                         "bench").id
            s.commit()
        r = wait_for(lambda: (x := srv_rollout(self.srv, rid)).status in ("paused", "completed") and x,
                     12 * self.w + 60, "the bad version stopped")

        def wave0() -> list[Any]:
            with Session(self.srv.engine) as s:
                return list(s.exec(select(RolloutTarget).where(RolloutTarget.rollout_id == rid,
                                                               RolloutTarget.wave_index == 0)))
        wait_for(lambda: all(t.status == "rolled-back" for t in wave0()), 6 * self.w + 30, "canary rolled back")
        canary = sorted(t.device_id for t in wave0())
        with Session(self.srv.engine) as s:
            first_bad = min(x.window_end for x in s.exec(select(TelemetryWindow).where(
                TelemetryWindow.device_id.in_(canary), TelemetryWindow.model_version == BAD_VERSION)))
            back_at = max(h.at for h in s.exec(select(TargetStatusChange).where(
                TargetStatusChange.rollout_id == rid, TargetStatusChange.to_status == "rolled-back")))
            cmds = s.exec(select(RolloutCommand).where(RolloutCommand.rollout_id == rid)).all()
            outside = {c.device_id for c in cmds} - set(canary)
            service.abort(s, rid, "bench")
            s.commit()
        self.result.update(status=r.status, gates=[g["gate"] for g in (r.reason or {}).get("gates", [])],
                           canary_as_planned=canary == sorted(self.ids),
                           windows_to_rolled_back=round((back_at - first_bad) / self.w, 2),
                           detect_windows=round((r.reason["at"] - first_bad) / self.w, 2) if r.reason else None,
                           devices_outside_canary_commanded=len(outside))

    def finish(self, timeout: float) -> dict[str, Any]:
        if self.thread is not None:
            self.thread.join(timeout)
            if self.thread.is_alive():
                self.result["status"] = "still running at the end of the load"
        return self.result

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
            try:
                self._out.get(timeout=30)  # the device process's report (unused): lets it exit
            except Exception:  # noqa: BLE001
                pass
        for p in self._procs:
            p.join(10)
        if self.srv is not None:
            self.srv.stop()
