"""Rollout evidence reads what ingest merged (aggregates tagged with the wave, per-device window
runs), never raw telemetry windows (issue 19): a wave's verdict is the same with every raw window
deleted right after ingest (as if retention had dropped the partition), no statement of an
evaluation touches the raw table, and the candidate is still the wave's devices only.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import delete, event, func
from sqlmodel import Session, select

from fleet.models import Aggregate, DeviceVersionWindows, TelemetryWindow
from tests.rollouts.harness import Harness, now0, spec_dict
from tests.rollouts.simdevice import Behaviour
from tests.rollouts.test_evaluator import create, installs_per_device


def _blind_to_raw_windows(h: Harness) -> list[str]:
    """Delete every raw window right after ingest stores it, and record the SQL of evaluator ticks
    that names the raw table (returned list)."""
    ingest, tick = h.ingest, h.evaluator.tick
    seen: list[str] = []
    in_tick = [False]

    def ingest_then_drop(messages: list[tuple[str, bytes]]) -> None:
        ingest(messages)
        with Session(h.engine) as s:
            s.execute(delete(TelemetryWindow))
            s.commit()

    def counted_tick(at: float) -> Any:
        in_tick[0] = True
        try:
            return tick(at)
        finally:
            in_tick[0] = False

    @event.listens_for(h.engine, "before_cursor_execute")
    def _sql(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if in_tick[0] and "telemetrywindow" in statement.lower():
            seen.append(statement)

    h.ingest, h.evaluator.tick = ingest_then_drop, counted_tick  # type: ignore[method-assign]
    return seen


def _outcome(h: Harness, rid: int) -> tuple[str, list[str], dict[str, Any] | None]:
    r = h.rollout(rid)
    gates = sorted(g["gate"] for g in (r.reason or {}).get("gates", []))
    return r.status, gates, (r.reason or {}).get("evidence")


@pytest.mark.parametrize("behaviour, gate", [(Behaviour(), None), (Behaviour(error_rate=0.3), "errors"),
                                             (Behaviour(latency_us=6000), "latency_p99"),
                                             (Behaviour(drift=True), "prediction_drift")],
                         ids=["good", "errors", "latency", "drift"])
def test_same_verdict_with_the_raw_windows_gone(engine, tmp_path, behaviour, gate):
    """The verdicts test_evaluator pins for these versions, with every raw window deleted right
    after ingest and no evaluation statement naming the raw table."""
    h = Harness(engine, tmp_path, n_devices=20, behaviours={2: behaviour})
    seen = _blind_to_raw_windows(h)
    spec = spec_dict(percents=(10, 50, 100))
    rid = create(h, spec)
    h.run(rid, now0())
    status, gates, evidence = _outcome(h, rid)
    assert seen == []
    with Session(engine) as s:
        assert s.exec(select(TelemetryWindow.id)).first() is None   # really nothing raw was left
    if gate is None:
        assert status == "completed" and set(h.installed_versions().values()) == {2}
        return
    canary = {t.device_id for t in h.targets(rid) if t.wave_index == 0}
    assert status == "paused" and gate in gates
    assert set(installs_per_device(h, rid)) == canary   # stopped at the canary, nobody else commanded
    assert evidence["candidate"]["devices"] == len(canary) and evidence["control"]["devices"] == 20 - len(canary)


def test_a_device_outside_the_rollout_on_the_candidate_is_no_evidence(engine, tmp_path):
    """A device that is no target runs the candidate badly: no wave's evidence holds it."""
    h = Harness(engine, tmp_path, n_devices=20)
    outsider = "dev-0000"   # even: no "lab" tag, so not a target
    v2 = h.builds[(2, "x86-64-generic")]
    h.sims[outsider].installed = {"name": "digits", "version": 2, "manifest_sha256": v2.manifest_sha256,
                                  "bundle_sha256": v2.bundle_sha256}
    h.sims[outsider].behaviours = {2: Behaviour(error_rate=0.6, latency_us=9000, drift=True)}
    rid = create(h, {**spec_dict(percents=(10, 50, 100)), "target": {"tags": ["lab"]}})
    assert outsider not in {t.device_id for t in h.targets(rid)}
    h.run(rid, now0())
    status, gates, _ = _outcome(h, rid)
    assert status == "completed" and gates == []
    with Session(engine) as s:   # its windows were merged, untagged
        assert s.exec(select(Aggregate.id).where(Aggregate.model_version == 2, Aggregate.wave == "")).first()


def test_a_bad_wave_device_among_good_control_devices_breaches(engine, tmp_path):
    """Only one canary device's candidate is bad; the control (later waves, on v1) is good: the
    errors gate sees the difference, and the evidence names who was in which cohort."""
    h = Harness(engine, tmp_path, n_devices=20)
    rid = create(h, spec_dict(percents=(10, 50, 100)))
    canary = {t.device_id for t in h.targets(rid) if t.wave_index == 0}
    h.sims[sorted(canary)[0]].behaviours = {2: Behaviour(error_rate=0.5)}
    h.run(rid, now0())
    status, gates, evidence = _outcome(h, rid)
    assert status == "paused" and "errors" in gates
    assert set(installs_per_device(h, rid)) == canary
    assert evidence["candidate"]["devices"] == len(canary)
    assert evidence["control"]["devices"] == 20 - len(canary)
    detail = next(g for g in h.rollout(rid).reason["gates"] if g["gate"] == "errors")["detail"]
    assert detail["control_rate"] == 0.0 and detail["candidate_rate"] > 0.1
    with Session(engine) as s:   # the candidate's rows carry the wave's tag, the control's their own
        tags = {(v, w) for v, w in s.exec(select(Aggregate.model_version, Aggregate.wave).distinct()).all()}
    assert (2, f"{rid}:0") in tags and {w for v, w in tags if v == 2} == {f"{rid}:0"}
    assert {(1, f"{rid}:1"), (1, f"{rid}:2")} <= tags
    with Session(engine) as s:   # the per-device counts the reporting gate reads agree with the raw rows
        raw = {(d, v, r): int(n) for d, v, r, n in s.exec(
            select(TelemetryWindow.device_id, TelemetryWindow.model_version, TelemetryWindow.role, func.count())
            .group_by(TelemetryWindow.device_id, TelemetryWindow.model_version, TelemetryWindow.role)).all()}
        kept = {(c.device_id, c.model_version, c.role): c.windows for c in s.exec(select(DeviceVersionWindows)).all()}
    assert kept == raw and any(v == 2 for _, v, _ in kept)


def test_a_control_device_on_two_older_versions_counts_once(engine):
    """The control's device count reads the per-device counts: a device that sent windows of two
    versions other than the candidate (v1, then v0 after a local rollback) is one device."""
    from fleet.rollouts import wave_telemetry
    from fleet.rollouts.models import RolloutTarget

    with Session(engine) as s:
        for dev, versions in (("c-1", (0, 1)), ("c-2", (1,)), ("c-3", (3,))):  # c-3 runs the candidate
            s.add(RolloutTarget(rollout_id=7, wave_index=1, device_id=dev))
            for v in versions:
                s.add(DeviceVersionWindows(device_id=dev, model_name="m", role="active", model_version=v,
                                           first_start=100.0, last_end=200.0, windows=4))
        s.commit()
        assert wave_telemetry.devices_reporting(s, "m", 7, [1], 150.0, exclude_version=3) == 2  # c-1 and c-2
        assert wave_telemetry.devices_reporting(s, "m", 7, [1], 250.0, exclude_version=3) == 0  # none since
