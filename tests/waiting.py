"""Polling for a condition with a deadline: the one wait every end-to-end test uses."""

from __future__ import annotations

import time
from typing import Any


def wait_for(pred: Any, timeout: float = 20.0, what: str = "condition", interval: float = 0.05) -> Any:
    """Return pred()'s first truthy value; fail the test with `what` when the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
