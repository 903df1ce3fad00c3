"""Reads the evidence a wave is judged on from the fleet database: the devices' verified signed
state (Device rows, DeviceEvent rows) and their verified telemetry as ingest merged it (Aggregate
rows tagged with the wave, per-device window runs: fleet.rollouts.wave_telemetry), for the wave's
devices (candidate) and for the rest of the rollout's devices still on the version before
(control). Raw telemetry windows are never read here. Only what ingest verified is read; nothing
the server assumed. The one write: a signature refusal under a real command id is audited
(note_unverified), never counted.
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
from fleet.ingest.rollout_view import wave_tag
from fleet.models import Aggregate, AuditEntry, Device, DeviceEvent, TelemetryWindow
from fleet.rollouts import wave_telemetry
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
MAX_CONTROL_ROWS = 2000   # newest control/previous-version aggregate rows read per evaluation
MAX_LABEL_CONTROL_DEVICES = 200   # control devices whose backend-joined labels are read
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


def merge_windows(windows: Iterable[TelemetryWindow | Aggregate]) -> CohortStats:
    """Add up telemetry windows, or Aggregate rows (windows ingest already merged: the same
    payload shape plus n_windows): counts, latency per device class, and the prediction/feature
    histograms by the one merge (fleet.ingest.aggregate.sum_histograms: windows on other edges
    than the first one's are left out, never mixed in). `devices` counts raw windows' devices
    only (an aggregate row does not say which devices it holds)."""
    s = CohortStats()
    s.quality = OnlineQuality()   # online accuracy, confidence (issue 14: fleet.analytics)
    devices: set[str] = set()
    payloads: list[Mapping[str, Any]] = []
    for w in windows:
        p: Mapping[str, Any] = w.payload or {}
        s.requests += int(w.requests)
        s.errors += int(w.errors)
        if isinstance(w, Aggregate):
            s.windows += int(w.n_windows)
        else:
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
    rid, wave = (wave_targets[0].rollout_id, wave_targets[0].wave_index) if wave_targets else (0, -1)
    per_device = wave_telemetry.device_windows(session, q.model_name, rid, wave, q.version, role, q.since)
    cmd_ids = [t.command_id for t in wave_targets if t.command_id]
    events = _command_events(session, ids, cmd_ids, q.since)
    sent = delivered_at(session, cmd_ids)
    dev_evidence = [_device_evidence(t, devices.get(t.device_id), q, events, sent, per_device.get(t.device_id, 0),
                                     now) for t in wave_targets]
    cand = merge_windows(wave_telemetry.aggregates(session, q.model_name, rid, [wave], q.since, role=role,
                                                   version=q.version))
    cand.devices = sum(1 for t in wave_targets if per_device.get(t.device_id))
    control, previous = _reference(session, q, rid, wave, other_targets)
    ev = WaveEvidence(now=now, mode=q.phase, devices=dev_evidence, candidate=cand,
                      control=control, previous=previous, baseline=q.baseline)
    from fleet.analytics.join import add_wave_labels  # labels posted at the backend (issue 14)

    control_ids = [t.device_id for t in other_targets][:MAX_LABEL_CONTROL_DEVICES] if q.phase == "install" else ids
    add_wave_labels(session, ev.candidate.quality, control.quality, model=q.model_name, version=q.version,
                    wave_devices=ids, control_devices=control_ids, since=q.since)
    return ev, devices


def _reference(session: Session, q: EvidenceQuery, rid: int, wave: int, other_targets: Sequence[RolloutTarget]
               ) -> tuple[CohortStats, CohortStats]:
    """(control, previous) from the merged rows of other versions than the candidate, role active:
    install phase: control = the rollout's later waves' devices over the phase plus a lookback;
    shadow/ab: the wave's own active model over the phase (the best control). previous (latency
    reference) = both, the newest MAX_CONTROL_ROWS rows."""
    later = sorted({t.wave_index for t in other_targets})
    since = q.since - CONTROL_LOOKBACK_S
    rows = wave_telemetry.aggregates(session, q.model_name, rid, [*later, wave], since,
                                     exclude_version=q.version, limit=MAX_CONTROL_ROWS)
    own = wave_tag(rid, wave)
    if q.phase != "install":
        control = merge_windows(a for a in rows if a.wave == own and a.window_start + a.window_seconds > q.since)
        control.devices = wave_telemetry.devices_reporting(session, q.model_name, rid, [wave], q.since,
                                                           exclude_version=q.version)
    else:
        control = merge_windows(a for a in rows if a.wave != own)
        control.devices = wave_telemetry.devices_reporting(session, q.model_name, rid, later, since,
                                                           exclude_version=q.version)
    return control, merge_windows(rows)


def _command_events(session: Session, ids: Sequence[str], cmd_ids: Sequence[str], since: float
                    ) -> dict[str, list[DeviceEvent]]:
    """The devices' events about our commands (and local rollbacks) since the phase started;
    signature refusals under a real command id are audited on the way."""
    events: dict[str, list[DeviceEvent]] = {}
    wanted = set(cmd_ids)
    for chunk in _chunks(ids):
        evq = select(DeviceEvent).where(DeviceEvent.device_id.in_(chunk), DeviceEvent.time >= since - 1)
        for ev in session.exec(evq).all():
            if ev.command_id in wanted or ev.kind == "local-rollback":
                events.setdefault(ev.device_id, []).append(ev)
                if ev.command_id in wanted and is_unverified(ev.kind, ev.reason, ev.details
                                                             if isinstance(ev.details, Mapping) else None):
                    note_unverified(session, ev)
    return events


def _device_evidence(t: RolloutTarget, d: Device | None, q: EvidenceQuery, events: Mapping[str, list[DeviceEvent]],
                     sent: Mapping[str, float], windows: int, now: float) -> DeviceEvidence:
    """What the fleet verified about one wave device: candidate loaded, its own failure reports,
    candidate windows; the report clock runs from delivery (broker PUBACK), never while blind."""
    delivered = sent.get(t.command_id or "")
    if delivered is not None and t.commanded_at is not None:
        delivered = max(delivered, t.commanded_at)
    started = clock_start(delivered, q.blind, now)
    if d is None:
        return DeviceEvidence(t.device_id, t.device_class, started, failure="unknown-device")
    loaded = candidate_loaded(d, q)
    failure = device_failure(d, t, events)
    if failure is None and not loaded and t.installed_at is not None and q.phase == "install":
        failure = "local-rollback"   # it had the candidate and no longer has it
    return DeviceEvidence(t.device_id, d.device_class, started, installed=loaded, installed_at=t.installed_at,
                          failure=failure, windows=windows)
