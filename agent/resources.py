"""Resource use of the agent process and the device (psutil), for each telemetry window."""

from __future__ import annotations

from typing import Any

import psutil


class ResourceSampler:
    def __init__(self) -> None:
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)  # first call primes the counter

    def sample(self) -> dict[str, Any]:
        try:
            cpu = self._proc.cpu_percent(None)
            rss = self._proc.memory_info().rss / 2**20
            mem = psutil.virtual_memory().percent
        except psutil.Error:
            return {"cpu_percent": None, "rss_mb": None, "mem_percent": None, "temp_c": None}
        return {"cpu_percent": round(cpu, 1), "rss_mb": round(rss, 1), "mem_percent": round(mem, 1),
                "temp_c": read_temperature()}


def read_temperature() -> float | None:
    """Hottest current sensor reading, or None where the platform has none (most VMs)."""
    fn = getattr(psutil, "sensors_temperatures", None)
    if fn is None:
        return None
    try:
        temps = fn()
    except (OSError, RuntimeError):
        return None
    vals = [t.current for entries in temps.values() for t in entries if t.current is not None]
    return round(max(vals), 1) if vals else None
