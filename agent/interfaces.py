"""The typed interfaces between the agent's parts: what the model lifecycle, the command handler
and the predictor need from the agent around them, instead of bundles of callbacks.

`agent.daemon.Agent` provides them (it is the Reporter and the TelemetryControl, its
ModelMonitor feeds telemetry and outcomes, the Lifecycle watches probation); a test may provide
its own objects with these methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agent.serving import LoadedModel


class Reporter(Protocol):
    """Where outcomes go: signed events for the fleet, and the signal that the device's state
    changed (the retained MQTT state and status.json are rewritten)."""

    def emit_event(self, kind: str, command_id: str | None = None, reason: str | None = None,
                   details: dict[str, Any] | None = None) -> None: ...

    def changed(self) -> None: ...


class ModelMonitor(Protocol):
    """Telemetry's roster: which loaded models are reported on, and in which role
    (active, shadow, ab); `extra` rides along in each window (e.g. the active version)."""

    def track(self, model: LoadedModel, role: str, **extra: Any) -> None: ...

    def untrack(self, model: LoadedModel) -> None: ...


class TelemetryControl(Protocol):
    """Where a fleet `telemetry-config` command lands: applied now and kept across restarts."""

    def set_telemetry_config(self, window_s: float | None, sample_rate: float | None) -> None: ...


class Probation(Protocol):
    """What the predictor reports about a model just switched in, while it is on probation."""

    def check_probation(self, model: LoadedModel) -> None:
        """A runtime error happened: roll back if the error rate is too high."""

    def end_probation(self, model: LoadedModel) -> None:
        """The probation requests are done: check the served latency."""
