"""What a wave is judged on and what the judgement says: the evidence types the gates read
(fleet.rollouts.evidence fills them from the database) and the wave's verdict. Pure data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.sketches import LatencyHistogram
from edgefleet.gates import FAIL, GateVerdict
from fleet.rollouts.spec import Gates

HEALTHY, PENDING = "healthy", "pending"   # a device's outcome; failures are "failed:<reason>"


@dataclass
class DeviceEvidence:
    """What the fleet verified about one wave device (from its signed state and telemetry)."""

    device_id: str
    device_class: str
    commanded_at: float | None = None   # when the candidate command went out
    installed: bool = False             # signed state: candidate installed (or loaded as shadow/ab)
    installed_at: float | None = None
    failure: str | None = None          # install-failed, refused, local-rollback, ... from signed reports
    windows: int = 0                    # candidate telemetry windows since the command


@dataclass
class CohortStats:
    """Telemetry merged over a set of devices and windows."""

    requests: int = 0
    errors: int = 0
    windows: int = 0
    devices: int = 0
    latency: dict[str, LatencyHistogram] = field(default_factory=dict)   # by device class
    prediction: dict[str, Any] | None = None     # {"kind", "counts", ...} summed
    features: dict[str, dict[str, Any]] = field(default_factory=dict)   # name -> {"edges_hash", "counts"}
    shadow_compared: int = 0
    shadow_agreed: int = 0
    quality: Any = None   # fleet.analytics.OnlineQuality: labelled outcomes and confidence

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass
class WaveEvidence:
    now: float
    mode: str
    devices: list[DeviceEvidence]
    candidate: CohortStats
    control: CohortStats
    previous: CohortStats            # the version before, same device classes (latency reference)
    baseline: Mapping[str, Any] | None = None   # the candidate manifest's drift_baseline
    # device id -> healthy | pending | failed:<reason>, read from the targets' status history
    # (machine.target_outcomes); None: derived from `devices` (pure gate tests)
    outcomes: Mapping[str, str] | None = None


@dataclass
class Verdict:
    status: str                      # pass | fail | wait
    results: list[GateVerdict]
    device_outcomes: dict[str, str]  # device id -> healthy | pending | failed:<reason>

    @property
    def breaches(self) -> list[GateVerdict]:
        return [r for r in self.results if r.status == FAIL]

    @property
    def failed_devices(self) -> list[str]:
        return sorted(d for d, o in self.device_outcomes.items() if o.startswith("failed"))

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "results": [r.to_dict() for r in self.results],
                "device_outcomes": dict(sorted(self.device_outcomes.items()))}


# ------------------------------------------------------------------------------------------
# per-device outcome


def device_outcome(d: DeviceEvidence, g: Gates, now: float) -> str:
    """healthy (installed and reporting), pending, or failed:<reason>. A silent device fails
    after report_timeout_s: no answer to the command, or installed but never any telemetry."""
    if d.failure:
        return f"failed:{d.failure}"
    if d.installed and d.windows >= g.min_windows:
        return HEALTHY
    started = d.commanded_at
    if started is not None and now - started > g.report_timeout_s:
        return "failed:no-telemetry" if d.installed else "failed:timeout"
    return PENDING
