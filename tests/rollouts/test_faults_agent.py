"""Issue 20, agent side: a copy of a command the agent already accepted (the fleet re-published
it after a restart, or MQTT redelivered it) is answered with the original's result and
`duplicate: true`; the signed last_command keeps the real outcome instead of `refused (stale)`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from agent.commands import CommandHandler
from agent.config import AgentConfig
from agent.keys import Keyring, generate_keypair, load_private_key, sign_document
from agent.protocol import make_command


class _Lifecycle:
    def __init__(self) -> None:
        self.stopped = 0

    def stop_candidate(self) -> None:
        self.stopped += 1


class _Reporter:
    """The handler's Reporter and TelemetryControl (agent.interfaces): records events."""

    def __init__(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        self.events = events

    def emit_event(self, kind: str, **kw: Any) -> None:
        self.events.append((kind, kw))

    def changed(self) -> None:
        pass

    def set_telemetry_config(self, window_s: float | None, sample_rate: float | None) -> None:
        pass


def _handler(tmp_path: Path) -> tuple[CommandHandler, Any, list[tuple[str, dict[str, Any]]], _Lifecycle]:
    priv, _ = generate_keypair(tmp_path / "keys", "fleet")
    key = load_private_key(priv)
    ring = Keyring.from_public_keys([key.public_key()])
    events: list[tuple[str, dict[str, Any]]] = []
    lc = _Lifecycle()
    (tmp_path / "state").mkdir()
    cfg = AgentConfig(device_id="dev-1", state_dir=str(tmp_path / "state"), max_bundle_bytes=1 << 20)
    h = CommandHandler(cfg, SimpleNamespace(fleet=ring, keyring=ring), lc,  # type: ignore[arg-type]
                       _Reporter(events), _Reporter(events))
    return h, key, events, lc


def _wait(pred: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_duplicate_command_is_answered_with_its_original_result(tmp_path):
    h, key, events, lc = _handler(tmp_path)
    try:
        raw = json.dumps(sign_document(make_command("dev-1", 1, "stop-candidate", {}), key)).encode()
        h.receive(raw)
        _wait(lambda: h.last_command is not None and h.last_command["result"] == "ok")
        assert lc.stopped == 1
        h.receive(raw)                        # the fleet re-publishes it after a restart
        assert lc.stopped == 1                # not run twice
        assert h.last_command["result"] == "ok"   # what the device signs in its state
        kind, kw = events[-1]
        assert kind == "command-duplicate" and kw["details"]["duplicate"] is True
        assert kw["details"]["result"] == "ok" and kw["command_id"] == h.last_command["id"]
        # an old command the agent never saw is still refused as stale
        old = json.dumps(sign_document(make_command("dev-1", 1, "stop-candidate", {}), key)).encode()
        h.receive(old)
        assert events[-1][0] == "command-refused"
    finally:
        h.stop()
