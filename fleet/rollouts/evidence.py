"""Reads the evidence a wave is judged on from the fleet database: the devices' verified signed
state (Device rows, DeviceEvent rows) and their verified telemetry (TelemetryWindow rows), for
the wave's devices (candidate) and for the rest of the rollout's devices still on the version
before (control). Only what ingest verified is read; nothing the server assumed. The one write:
a signature refusal under a real command id is audited (note_unverified), never counted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session, select

from agent.sketches import LatencyHistogram
from fleet import audit
from fleet.analytics.quality import OnlineQuality
from fleet.ingest.aggregate import sum_histograms
from fleet.models import AuditEntry, Device, DeviceEvent, TelemetryWindow
from fleet.rollouts.blind import clock_start
from fleet.rollouts.gates import CohortStats, DeviceEvidence, WaveEvidence
from fleet.rollouts.models import RolloutCommand, RolloutTarget

FAILED_RESULTS = {"failed", "refused", "rolled-back"}
FAILURE_EVENTS = {"install-failed", "local-rollback", "command-refused", "bundle-refused"}
# A refusal for these reasons answers a copy of a command the device already had (a re-publish
# after a fleet restart, MQTT redelivery): the device's answer to the original stands, so the
# copy's refusal is a duplicate, never a failure. A command that was superseded and never ran
# ends by the report timeout instead.
DUPLICATE_REASONS = ("stale",)
# A refusal because the copy did not verify as the fleet's (bad/missing signature, a non-fleet key)
# is never the device's answer to a command the fleet signed: someone else published under its id
# (or the message was corrupted). It is audited as a security signal, not counted as a failure.
SIGNATURE_REASONS = ("bad-signature", "no-signature", "unknown-key", "untrusted-key")
UNVERIFIED_ACTION = "device.command-unverified"
CONTROL_LOOKBACK_S = 900.0
MAX_CONTROL_DEVICES = 200
MAX_CONTROL_WINDOWS = 2000   # newest control/previous-version windows read per evaluation (per 500 devices)
_CHUNK = 500
log = logging.getLogger(__name__)


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i:i + _CHUNK]


def load_devices(session: Session, ids: Sequence[str]) -> dict[str, Device]:
    out: dict[str, Device] = {}
    for chunk in _chunks(list(ids)):
        for d in session.exec(select(Device).where(Device.id.in_(chunk))).all():
            out[d.id] = d
    return out


def load_windows(session: Session, ids: Sequence[str], model_name: str, since: float, *,
                 exclude_version: int | None = None, limit: int | None = None) -> list[TelemetryWindow]:
    """Telemetry windows of these devices ending after `since`; with `limit`, only the newest
    ones (the control reference stays cheap however long the lookback and however many devices)."""
    out: list[TelemetryWindow] = []
    for chunk in _chunks(list(ids)):
        q = select(TelemetryWindow).where(TelemetryWindow.device_id.in_(chunk),
                                          TelemetryWindow.model_name == model_name,
                                          TelemetryWindow.window_end >= since)
        if exclude_version is not None:
            q = q.where(TelemetryWindow.model_version != exclude_version, TelemetryWindow.role == "active")
        if limit is not None:
            q = q.order_by(TelemetryWindow.window_end.desc()).limit(limit)
        out.extend(session.exec(q).all())
    return out


def merge_windows(windows: Iterable[TelemetryWindow]) -> CohortStats:
    """Add up telemetry windows: counts, latency per device class, and the prediction/feature
    histograms by the one merge (fleet.ingest.aggregate.sum_histograms: windows on other edges
    than the first one's are left out, never mixed in)."""
    s = CohortStats()
    s.quality = OnlineQuality()   # online accuracy, confidence (issue 14: fleet.analytics)
    devices: set[str] = set()
    payloads: list[Mapping[str, Any]] = []
    for w in windows:
        p: Mapping[str, Any] = w.payload or {}
        s.requests += int(w.requests)
        s.errors += int(w.errors)
        s.windows += 1
        devices.add(w.device_id)
        _add_latency(s, w.device_class or p.get("device_class") or "", p.get("latency_us"))
        payloads.append(p)
        s.quality.add_payload(p)
        sh = p.get("shadow")
        if isinstance(sh, Mapping):
            s.shadow_compared += int(sh.get("compared", 0) or 0)
            s.shadow_agreed += int(sh.get("agreed", 0) or 0)
    s.devices = len(devices)
    hs = sum_histograms(payloads)
    if hs.prediction is not None:
        s.prediction = {"kind": hs.prediction.get("kind"), "counts": hs.prediction["counts"],
                        "edges_hash": hs.prediction.get("edges_hash")}
    s.features = {f["name"]: {"edges_hash": f["edges_hash"], "counts": f["counts"]} for f in hs.features or ()}
    return s


def _add_latency(s: CohortStats, cls: str, lat: Any) -> None:
    if not lat:
        return
    try:
        h = LatencyHistogram.from_dict(lat)
    except (ValueError, TypeError):
        return
    s.latency[cls] = s.latency[cls].merge(h) if cls in s.latency else h


def delivered_at(session: Session, command_ids: Sequence[str]) -> dict[str, float]:
    """command id -> when the broker acknowledged its publish (RolloutCommand.sent_at)."""
    out: dict[str, float] = {}
    for chunk in _chunks([c for c in command_ids if c]):
        for cid, at in session.exec(select(RolloutCommand.command_id, RolloutCommand.sent_at)
                                    .where(RolloutCommand.command_id.in_(chunk))).all():
            if at is not None:
                out[cid] = float(at)
    return out


@dataclass
class EvidenceQuery:
    model_name: str
    version: int
    manifest_sha256: dict[str, str]     # device class -> candidate manifest sha (install check)
    phase: str                          # install | shadow | ab
    since: float                        # start of this wave phase
    baseline: Mapping[str, Any] | None
    blind: Sequence[Sequence[float | None]] = field(default_factory=list)   # periods the fleet was blind


def candidate_loaded(device: Device, q: EvidenceQuery) -> bool:
    """Does the device's verified signed state show the candidate in place for this phase?"""
    if q.phase == "install":
        if device.installed_name != q.model_name or device.installed_version != q.version:
            return False
        want = q.manifest_sha256.get(device.device_class)
        have = device.installed_manifest_sha256
        return not (want and have and want != have)
    cand = (device.state or {}).get("candidate") if isinstance(device.state, dict) else None
    return bool(isinstance(cand, Mapping) and cand.get("name") == q.model_name
                and cand.get("version") == q.version and cand.get("mode", q.phase) == q.phase)


def is_duplicate(kind: str, reason: str | None, details: Mapping[str, Any] | None = None) -> bool:
    """Does this refusal (event or last_command) only say the command was a copy?"""
    if (details or {}).get("duplicate"):
        return True
    code = (details or {}).get("code") or (reason or "")
    return kind in ("command-refused", "refused") and str(code).startswith(DUPLICATE_REASONS)


def is_unverified(kind: str, reason: str | None, details: Mapping[str, Any] | None = None) -> bool:
    """Is this refusal of a message that did not verify as the fleet's (see SIGNATURE_REASONS)?"""
    if (details or {}).get("unverified"):
        return True
    code = (details or {}).get("code") or (reason or "")
    return kind in ("command-refused", "refused") and str(code).startswith(SIGNATURE_REASONS)


def note_unverified(session: Session, ev: DeviceEvent) -> bool:
    """Audit (once per device and command id) a signature refusal under the id of a command the
    fleet really sent: an attack or corruption signal on that device's command topic."""
    target = f"device:{ev.device_id}/command:{ev.command_id}"
    if session.exec(select(AuditEntry.id).where(AuditEntry.action == UNVERIFIED_ACTION,
                                                AuditEntry.target == target).limit(1)).first() is not None:
        return False
    details = ev.details if isinstance(ev.details, Mapping) else {}
    log.warning("event=command-unverified device=%s command=%s signature=%s: a copy of a fleet command that"
                " did not verify was refused by the device (forgery or corruption); not counted as its answer",
                ev.device_id, ev.command_id, details.get("signature") or details.get("code"))
    audit.record(session, "rollout-evaluator", UNVERIFIED_ACTION, target, None,
                 {"reason": ev.reason, "details": dict(details), "time": ev.time})
    return True


def device_failure(device: Device, target: RolloutTarget, events: Mapping[str, list[DeviceEvent]]) -> str | None:
    """A failure the device itself reported for our command, or a local rollback after install.
    Answers are keyed by command id; the refusal of a duplicate is not a failure."""
    state = device.state if isinstance(device.state, dict) else {}
    last = state.get("last_command") or {}
    if target.command_id and last.get("id") == target.command_id and last.get("result") in FAILED_RESULTS \
            and not last.get("duplicate") and not is_duplicate(last["result"], last.get("reason")) \
            and not is_unverified(last["result"], last.get("reason"), last):
        return f"{last.get('kind', 'command')}-{last['result']}"
    for ev in events.get(device.id, ()):
        if ev.kind in FAILURE_EVENTS and (ev.command_id == target.command_id or ev.kind == "local-rollback") \
                and not is_duplicate(ev.kind, ev.reason, ev.details if isinstance(ev.details, Mapping) else None) \
                and not is_unverified(ev.kind, ev.reason, ev.details if isinstance(ev.details, Mapping) else None):
            return ev.kind
    return None


def collect(session: Session, q: EvidenceQuery, wave_targets: Sequence[RolloutTarget],
            other_targets: Sequence[RolloutTarget], now: float) -> tuple[WaveEvidence, dict[str, Device]]:
    """Evidence for one wave. Control = other devices of the rollout on a different version of
    the model, over the same period plus a lookback (so the last wave still has a reference)."""
    ids = [t.device_id for t in wave_targets]
    devices = load_devices(session, ids)
    role = {"install": "active", "shadow": "shadow", "ab": "ab"}[q.phase]
    cand_windows = [w for w in load_windows(session, ids, q.model_name, q.since)
                    if w.model_version == q.version and w.role == role]
    per_device: dict[str, int] = {}
    for w in cand_windows:
        per_device[w.device_id] = per_device.get(w.device_id, 0) + 1
    events: dict[str, list[DeviceEvent]] = {}
    cmd_ids = [t.command_id for t in wave_targets if t.command_id]
    for chunk in _chunks(ids):
        evq = select(DeviceEvent).where(DeviceEvent.device_id.in_(chunk), DeviceEvent.time >= q.since - 1)
        for ev in session.exec(evq).all():
            if ev.command_id in cmd_ids or ev.kind == "local-rollback":
                events.setdefault(ev.device_id, []).append(ev)
                if ev.command_id in cmd_ids and is_unverified(ev.kind, ev.reason, ev.details
                                                              if isinstance(ev.details, Mapping) else None):
                    note_unverified(session, ev)
    sent = delivered_at(session, cmd_ids)
    dev_evidence = []
    for t in wave_targets:
        d = devices.get(t.device_id)
        # the report clock runs from delivery (broker PUBACK), never while the fleet was blind
        delivered = sent.get(t.command_id or "")
        if delivered is not None and t.commanded_at is not None:
            delivered = max(delivered, t.commanded_at)
        started = clock_start(delivered, q.blind, now)
        if d is None:
            dev_evidence.append(DeviceEvidence(t.device_id, t.device_class, started, failure="unknown-device"))
            continue
        loaded = candidate_loaded(d, q)
        failure = device_failure(d, t, events)
        if failure is None and not loaded and t.installed_at is not None and q.phase == "install":
            failure = "local-rollback"   # it had the candidate and no longer has it
        dev_evidence.append(DeviceEvidence(t.device_id, d.device_class, started, installed=loaded,
                                           installed_at=t.installed_at, failure=failure,
                                           windows=per_device.get(t.device_id, 0)))
    control_ids = [t.device_id for t in other_targets][:MAX_CONTROL_DEVICES]
    ref_windows = load_windows(session, control_ids + ids, q.model_name, q.since - CONTROL_LOOKBACK_S,
                               exclude_version=q.version, limit=MAX_CONTROL_WINDOWS)
    if q.phase != "install":
        # shadow/ab: the wave's own active model over the same period is the best control
        control = merge_windows(w for w in ref_windows if w.window_end >= q.since)
    else:
        control_set = set(control_ids)
        control = merge_windows(w for w in ref_windows if w.device_id in control_set)
    previous = merge_windows(ref_windows)
    ev = WaveEvidence(now=now, mode=q.phase, devices=dev_evidence, candidate=merge_windows(cand_windows),
                      control=control, previous=previous, baseline=q.baseline)
    from fleet.analytics.join import add_wave_labels  # labels posted at the backend (issue 14)

    add_wave_labels(session, ev.candidate.quality, control.quality, model=q.model_name, version=q.version,
                    wave_devices=ids, control_devices=control_ids if q.phase == "install" else ids, since=q.since)
    return ev, devices
