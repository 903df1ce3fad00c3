"""What the demo shows while it runs: a live table of the fleet (rich) and a running log of the
changes the fleet manager reports (rollout status, waves, per-device targets, gate verdicts).

Everything shown is read back from the fleet manager's REST API, never from the demo's own
bookkeeping, so the table is what an operator would see.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from edgefleet.demo_client import ApiCallError, FleetClient
from edgefleet.demo_report import wave_number


@dataclass
class FleetSnapshot:
    devices: list[dict[str, Any]] = field(default_factory=list)
    rollouts: list[dict[str, Any]] = field(default_factory=list)
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)  # device id -> target in the watched rollout


def take_snapshot(client: FleetClient, rollout_id: int | None) -> FleetSnapshot:
    snap = FleetSnapshot(devices=client.get("/api/devices?limit=500")["items"],
                         rollouts=client.get("/api/rollouts")["rollouts"][:10])
    if rollout_id is not None:
        snap.targets = {t["device_id"]: t for t in client.get(f"/api/rollouts/{rollout_id}/targets")["targets"]}
    return snap


def _ago(ts: float | None) -> str:
    return "never" if not ts else f"{max(0.0, time.time() - ts):.0f}s ago"


def fleet_table(snap: FleetSnapshot) -> Table:
    t = Table(title="Devices (as the fleet manager sees them, from signed state reports)", expand=False)
    for col in ("device", "class", "region", "model", "online", "last seen", "rollout target"):
        t.add_column(col)
    for d in sorted(snap.devices, key=lambda d: d["id"]):
        inst = d.get("installed")
        model = f"{inst['name']} v{inst['version']}" if inst else "-"
        target = snap.targets.get(d["id"], {}).get("status", "")
        style = {"rolled-back": "yellow", "rolling-back": "yellow", "failed": "red",
                 "healthy": "green", "installed": "green"}.get(target, "")
        t.add_row(d["id"], d["device_class"], str(d["attributes"].get("region", "")), model,
                  "yes" if d.get("online") else "no", _ago(d.get("last_seen")),
                  f"[{style}]{target}[/]" if style else target)
    return t


def rollouts_table(snap: FleetSnapshot) -> Table:
    t = Table(title="Rollouts", expand=False)
    for col in ("id", "model", "status", "wave", "targets", "reason"):
        t.add_column(col)
    for r in snap.rollouts:
        style = {"completed": "green", "paused": "red", "rolled-back": "yellow"}.get(r["status"], "cyan")
        counts = ", ".join(f"{k} {v}" for k, v in sorted((r.get("targets") or {}).items()))
        reason = (r.get("reason") or {}).get("summary", "") if isinstance(r.get("reason"), dict) else ""
        t.add_row(str(r["id"]), f"{r['model_name']} v{r['version']}", f"[{style}]{r['status']}[/]",
                  wave_number(r.get("current_wave")), counts, reason[:90])
    return t


class DemoView:
    """Live tables on a terminal; plain log lines (and tables at milestones) anywhere else."""

    def __init__(self, client: FleetClient, console: Console | None = None) -> None:
        self.client = client
        self.console = console or Console()
        self.started = time.monotonic()
        self.rollout_id: int | None = None
        self._live: Live | None = None
        self._seen_targets: dict[str, str] = {}
        self._seen_rollout: tuple[str, int] | None = None
        self._last_poll = 0.0
        self.snapshot = FleetSnapshot()

    # -- log lines -------------------------------------------------------------------------------
    def say(self, message: str, style: str = "") -> None:
        stamp = f"[dim]{time.monotonic() - self.started:6.1f}s[/]"
        (self._live.console if self._live else self.console).print(f"{stamp} {message}", style=style or None)

    # -- live part -------------------------------------------------------------------------------
    def __enter__(self) -> DemoView:
        return self

    def start_live(self) -> None:
        """Live tables from here on (a terminal only); earlier steps print plain lines."""
        if self.console.is_terminal and self._live is None:
            self._live = Live(Group(), console=self.console, refresh_per_second=4, transient=True)
            self._live.start()

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()  # transient: the live frame goes, the final state stays on screen
            self._live = None
            if self.snapshot.devices:
                self.print_tables()

    def watch(self, rollout_id: int | None) -> None:
        self.rollout_id = rollout_id
        self._seen_targets = {}
        self._seen_rollout = None

    def poll(self, force: bool = False) -> FleetSnapshot:
        """Refresh from the API (at most twice a second) and print what changed since last time."""
        if not force and time.monotonic() - self._last_poll < 0.5:
            return self.snapshot
        self._last_poll = time.monotonic()
        try:
            snap = take_snapshot(self.client, self.rollout_id)
        except (ApiCallError, OSError) as exc:
            self.say(f"[red]fleet API unavailable: {exc}[/]")
            return self.snapshot
        self._report_changes(snap)
        self.snapshot = snap
        if self._live is not None:
            self._live.update(Group(rollouts_table(snap), fleet_table(snap)))
        return snap

    def print_tables(self) -> None:
        self.console.print(rollouts_table(self.snapshot))
        self.console.print(fleet_table(self.snapshot))

    def _report_changes(self, snap: FleetSnapshot) -> None:
        for dev, t in sorted(snap.targets.items()):
            if self._seen_targets.get(dev) != t["status"]:
                why = f" ({t['reason']})" if t.get("reason") else ""
                self.say(f"  {dev} [{t['device_class']}] wave {wave_number(t.get('wave'))}: {t['status']}{why}")
                self._seen_targets[dev] = t["status"]
        r = next((r for r in snap.rollouts if r["id"] == self.rollout_id), None)
        if r is not None and self._seen_rollout != (r["status"], r["current_wave"]):
            self._seen_rollout = (r["status"], r["current_wave"])
            self.say(f"rollout {r['id']} ({r['model_name']} v{r['version']}): {r['status']}, "
                     f"wave {wave_number(r['current_wave'])}",
                     style="bold")

    def panel(self, title: str, body: str, style: str = "cyan") -> None:
        (self._live.console if self._live else self.console).print(Panel(body, title=title, border_style=style))
