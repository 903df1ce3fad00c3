"""Wave clocks that stop while the fleet is blind.

When ingest cannot see the devices (fleet.ingest.health), a wave is not judged: missing
telemetry or a missing answer proves nothing. The blind periods are kept on the wave (in
`last_verdict["blind"]`, a short list of [start, end] pairs), and every clock of the wave
skips them: a device's report timeout runs from the broker's PUBACK for its command plus the
time the fleet was not blind since, and the soak timer moves forward by each blind period.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import Gauge
from sqlmodel import Session

from fleet.drift import alerts
from fleet.ingest.health import Blindness
from fleet.rollouts.models import Rollout, RolloutWave

MAX_INTERVALS = 50
# /metrics: alert on `edgefleet_rollout_waves_blind > 0` for longer than an outage you tolerate
WAVES_BLIND = Gauge("edgefleet_rollout_waves_blind", "Live rollout waves waiting because ingest cannot see the "
                    "devices (gates and clocks stopped)", ["kind"])


_counted: dict[tuple[int, int], str] = {}   # waves this process counts in WAVES_BLIND


def intervals(wave: RolloutWave) -> list[list[float]]:
    return [list(x) for x in ((wave.last_verdict or {}).get("blind") or [])]


def blind_after(start: float, periods: Sequence[Sequence[float | None]], at: float) -> float:
    """Seconds of the periods that lie after `start` (an open period ends at `at`)."""
    total = 0.0
    for p in periods:
        lo, hi = float(p[0]), float(p[1]) if len(p) > 1 and p[1] is not None else at
        total += max(0.0, hi - max(lo, start))
    return total


def clock_start(delivered: float | None, periods: Sequence[Sequence[float | None]], at: float) -> float | None:
    """When a device's report clock effectively started: delivery, pushed back by the blind time
    since. None while the command is not delivered yet (no clock runs)."""
    if delivered is None:
        return None
    return delivered + blind_after(delivered, periods, at)


def enter(wave: RolloutWave, why: Blindness, at: float) -> bool:
    """Record that the wave waits because the fleet is blind; True when it just started."""
    v: dict[str, Any] = dict(wave.last_verdict or {})
    periods = intervals(wave)
    started = not periods or periods[-1][1] is not None
    if started:
        periods.append([at, None])
    v["blind"] = periods[-MAX_INTERVALS:]
    v["waiting"] = why.to_dict()
    v["status"] = "wait"
    wave.last_verdict = v
    if started:
        WAVES_BLIND.labels(why.kind).inc()
        _counted[(wave.rollout_id, wave.index)] = why.kind
    return started


def leave(wave: RolloutWave, at: float) -> float:
    """Close an open blind period; the soak timer moves forward by it. Returns its length."""
    periods = intervals(wave)
    if not periods or periods[-1][1] is not None:
        return 0.0
    periods[-1][1] = at
    length = at - periods[-1][0]
    kind = _counted.pop((wave.rollout_id, wave.index), None)
    if kind is not None:
        WAVES_BLIND.labels(kind).dec()
    if wave.gates_passed_at is not None:
        wave.gates_passed_at += length
    v = dict(wave.last_verdict or {})
    v["blind"] = periods
    v["waiting"] = None
    wave.last_verdict = v
    return length


def raise_alert(s: Session, rollout: Rollout, wave: RolloutWave, why: Blindness, at: float, actor: str) -> int:
    """A wave that starts waiting blind is an open alert, made like a paused rollout's (reference
    "rollout:<id>"); its id is kept on the wave so the alert is resolved when the fleet sees again."""
    alert = alerts.raise_rollout_alert(s, rollout, {"at": at, "wave": wave.index, "wave_name": wave.name,
                                                    "summary": f"{why.message.removeprefix('waiting: ')}; gates and clocks stopped",
                                                    "waiting": why.to_dict()}, actor, state="waiting")
    wave.last_verdict = {**(wave.last_verdict or {}), "waiting_alert": alert.id}
    return int(alert.id or 0)


def resolve_alert(s: Session, wave: RolloutWave, actor: str) -> None:
    """The fleet sees the devices again: the wave's blind alert is closed as "resolved" (it needs
    nobody any more), so the open alerts list only what still does."""
    v = dict(wave.last_verdict or {})
    alert_id = v.pop("waiting_alert", None)
    wave.last_verdict = v
    if alert_id is not None:
        alerts.resolve(s, int(alert_id), actor)
