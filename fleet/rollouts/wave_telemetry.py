"""A rollout wave's telemetry from what ingest merged, never from raw windows (issue 19):

- cohort telemetry: Aggregate rows of the wave's tag (fleet.ingest.rollout_view: ingest keys every
  window of a target of an open rollout by "<rollout id>:<wave index>"), summed by the one merge
  (fleet.rollouts.evidence.merge_windows -> fleet.ingest.aggregate.sum_histograms);
- per-device window counts (the reporting gate): each device's windows per model, role and
  version (DeviceVersionWindows), joined with the wave's targets in one query.

Evaluating a wave of half a million devices thus reads a few hundred merged rows (slots x classes
x cohorts) and one small row per device, instead of every window's JSON payload. Rows are chosen
by aggregate slot: a slot counts when it ends after `since` (a window that started before the
phase can fall in the slot the phase started in; a candidate window never starts before it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, select

from fleet.ingest.rollout_view import wave_tag
from fleet.models import Aggregate, DeviceVersionWindows
from fleet.rollouts.models import RolloutTarget

MAX_SLOT_S = 86400.0   # no telemetry window is longer (bounds the index range of a slot query)


def aggregates(session: Session, model: str, rollout_id: int, waves: Sequence[int], since: float, *,
               role: str = "active", version: int | None = None, exclude_version: int | None = None,
               limit: int | None = None) -> list[Aggregate]:
    """Merged rows of these waves' devices for slots that end after `since` (the newest `limit`)."""
    if not waves:
        return []
    q = select(Aggregate).where(Aggregate.model_name == model,
                                Aggregate.wave.in_([wave_tag(rollout_id, w) for w in waves]),
                                Aggregate.window_start > since - MAX_SLOT_S,
                                Aggregate.window_start + Aggregate.window_seconds > since,
                                Aggregate.role == role)
    if version is not None:
        q = q.where(Aggregate.model_version == version)
    if exclude_version is not None:
        q = q.where(Aggregate.model_version != exclude_version)
    if limit is not None:
        q = q.order_by(Aggregate.window_start.desc()).limit(limit)
    return list(session.exec(q).all())


def _runs(rollout_id: int, waves: Sequence[int], model: str, role: str, since: float, version: int | None,
          exclude_version: int | None, *cols: Any) -> Any:
    on = RolloutTarget.device_id == DeviceVersionWindows.device_id
    q = select(*cols).select_from(DeviceVersionWindows).join(RolloutTarget, on).where(
        RolloutTarget.rollout_id == rollout_id, RolloutTarget.wave_index.in_(list(waves)),
        DeviceVersionWindows.model_name == model, DeviceVersionWindows.role == role, DeviceVersionWindows.last_end >= since)
    if version is not None:
        q = q.where(DeviceVersionWindows.model_version == version)
    if exclude_version is not None:
        q = q.where(DeviceVersionWindows.model_version != exclude_version)
    return q


def device_windows(session: Session, model: str, rollout_id: int, wave: int, version: int, role: str,
                   since: float) -> dict[str, int]:
    """Device -> windows of `version` in `role`, for the wave's devices that sent one after
    `since`. Counted from the device's first window of that version: the same as since the phase
    started, unless the device ran the candidate before (then its earlier windows count too)."""
    q = _runs(rollout_id, [wave], model, role, since, version, None,
              DeviceVersionWindows.device_id, DeviceVersionWindows.windows)
    return {d: int(n) for d, n in session.exec(q).all()}


def devices_reporting(session: Session, model: str, rollout_id: int, waves: Sequence[int], since: float, *,
                      role: str = "active", exclude_version: int | None = None) -> int:
    """How many of these waves' devices report another version than `exclude_version` after `since`
    (a device counts once, however many other versions it sent)."""
    if not waves:
        return 0
    q = _runs(rollout_id, waves, model, role, since, None, exclude_version,
              func.count(func.distinct(DeviceVersionWindows.device_id)))
    return int(session.exec(q).one())
