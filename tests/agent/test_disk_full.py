"""Issue 12, seen 3: with the state dir full, `_write_status()` raised ENOSPC in run_forever, the
agent exited and did not come back. Now it keeps serving on a full disk (a real 2 MB tmpfs):
status, outbox and log writes fail soft and are counted, `disk_full` shows in health and once per
telemetry window, installs are refused up front, and everything resumes when space returns."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from agent.daemon import Agent
from agent.disk_guard import DiskGuard, is_disk_full
from agent.lifecycle import InstallError
from tests.agent.conftest import AgentProcess, free_port, make_config, wait_for


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the test suite runs as root)")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> Path:
    """Write until the disk refuses another byte."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


def _telemetry(a: Agent) -> list[dict]:
    return [json.loads(m.payload)["payload"] for m in a.outbox.pending(0, 1000) if m.kind == "telemetry"]


def test_in_process_agent_serves_through_a_full_disk(small_disk: Path, fleet_keys, bundles, digits) -> None:
    x = digits[0][:4]
    state = small_disk / "state"
    a = Agent(make_config(state, fleet_keys["pub"], device_id="disk-1")).start()
    try:
        a.install(bundles["v1"])
        filler = fill(small_disk)

        a._write_status()  # the periodic write that killed run_forever
        for _ in range(10):
            assert a.predict(x)["logits"].shape == (4, 10)
        a.emit_event("test-event")  # an outbox write: dropped and counted, not raised
        a.flush_telemetry()  # the window's outbox write fails soft too
        health = a.status()
        assert health["disk_full"] is True and health["disk_write_failures"] >= 2
        with pytest.raises(InstallError) as err:
            a.install(bundles["v2"])
        assert err.value.reason == "no-space" and "needs" in str(err.value)
        assert a.predictor.active.version == 1
        assert not [p for p in state.rglob(".*tmp-*")]  # no half-written temp files left behind

        filler.unlink()  # space returns
        a._write_status()
        on_disk = json.loads((state / "status.json").read_text())
        assert on_disk["disk_full"] is False and on_disk["active"]["version"] == 1
        a.predict(x)
        first = a.flush_telemetry()[0]["resources"]
        assert first["disk_full"] is True and first["disk_write_failures"] >= 1  # reported once, for that window
        assert first["disk_free_mb"] > 0.5
        assert any(t["resources"]["disk_full"] for t in _telemetry(a))  # and it reached the outbox
        a.predict(x)
        assert a.flush_telemetry()[0]["resources"]["disk_full"] is False
        a.install(bundles["v2"])
        assert a.predictor.active.version == 2
    finally:
        a.stop()


def test_probation_rollback_on_a_full_disk_swaps_at_once_and_saves_the_pointer_later(
        small_disk: Path, fleet_keys, bundles, digits) -> None:
    """Writing the active pointer raised ENOSPC in the rollback thread, which died: the bad model
    kept serving until space returned. Now the swap happens in memory first and the pointer write
    fails soft (counted, reported) and is retried at the next status write."""
    x = digits[0][:4]
    state = small_disk / "state"
    a = Agent(make_config(state, fleet_keys["pub"], device_id="disk-rb")).start()
    events: list[tuple[str, dict]] = []
    emit = a.emit_event   # the agent is the lifecycle's Reporter
    a.emit_event = lambda kind, **kw: (events.append((kind, kw)), emit(kind, **kw))
    try:
        a.install(bundles["v1"])
        a.install(bundles["v2"])
        bad = a.predictor.active
        assert bad.version == 2 and a.predictor.previous.version == 1
        pointer = a.store.pointer_path.read_bytes()
        filler = fill(small_disk)

        bad.runtime_errors, bad.attempts = 5, 5      # probation sees a failing model ...
        a.lifecycle.check_probation(bad)             # ... and rolls back on its own thread
        wait_for(lambda: a.predictor.active.version == 1, 10, what="rolled back in memory")
        assert a.predict(x)["logits"].shape == (4, 10) and a.predictor.active.version == 1
        assert a.lifecycle.pointer_pending and a.store.pointer_path.read_bytes() == pointer   # still names v2
        kind, kw = wait_for(lambda: next((e for e in events if e[0] == "local-rollback"), None), 10,
                            what="local-rollback reported")
        assert kw["details"]["pointer_saved"] is False and kw["details"]["to_version"] == 1
        a._write_status()                            # still full: retried, counted, not raised
        health = a.status()
        assert health["pointer_pending"] is True and health["disk_full"] is True
        assert a.disk.failures["pointer"] >= 2

        filler.unlink()                              # space returns: the next status write saves it
        a._write_status()
        assert not a.lifecycle.pointer_pending
        assert a.store.pointer()["active"].version == 1 and a.store.pointer()["previous"] is None
        assert json.loads((state / "status.json").read_text())["pointer_pending"] is False
    finally:
        a.stop()
    b = Agent(make_config(state, fleet_keys["pub"], device_id="disk-rb")).start()   # a restart keeps v1
    try:
        assert b.predictor.active.version == 1
    finally:
        b.stop()


@pytest.mark.slow
def test_agent_process_survives_a_full_disk(small_disk: Path, tmp_path: Path, fleet_keys, bundles, digits) -> None:
    port = free_port()
    cfg = make_config(small_disk / "state", fleet_keys["pub"], device_id="disk-2", http_port=port)
    seed = Agent(cfg)
    seed.lifecycle.start()
    seed.install(bundles["v1"])
    seed.outbox.close()
    proc = AgentProcess(cfg, tmp_path / "agent.toml")  # its log file is on the small disk too
    proc.start()
    base = f"http://127.0.0.1:{port}"

    def predict() -> list:
        body = json.dumps({"inputs": digits[0][:2].tolist()}).encode()
        req = urllib.request.Request(f"{base}/v1/predict", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - local test server
            return json.loads(resp.read())["outputs"]["logits"]

    def health() -> dict:
        with urllib.request.urlopen(f"{base}/v1/status", timeout=10) as resp:  # noqa: S310
            return json.loads(resp.read())

    try:
        assert len(predict()) == 2
        filler = fill(small_disk)
        wait_for(lambda: health()["disk_write_failures"] >= 3, 20, what="status writes failing on the full disk")
        assert proc.proc.poll() is None  # still running (it used to exit here)
        assert health()["disk_full"] is True
        for _ in range(5):
            assert len(predict()) == 2
        filler.unlink()
        wait_for(lambda: proc.status().get("disk_full") is False, 20, what="status.json written again")
        assert proc.status()["ready"] is True and len(predict()) == 2
        wait_for(lambda: "event=disk-recovered" in proc.log(), 20, what="the recovery logged")
        assert "Logging error" not in proc.log() and "Traceback" not in proc.log()  # log writes failed softly
    finally:
        rc = proc.stop()
    assert rc == 0, proc.log()


def test_disk_guard_counts_and_recovers() -> None:
    g = DiskGuard()
    assert not g.failed("status", OSError(errno.EACCES, "denied"))  # not a full disk: the caller decides
    assert g.failed("status", OSError(errno.ENOSPC, "No space left on device"))
    assert g.failed("log", OSError(errno.ENOSPC, "No space left on device"))
    assert g.health() == {"disk_full": True, "disk_write_failures": 2}
    g.ok()
    assert g.health()["disk_full"] is False
    assert g.window_report() == {"disk_full": True, "disk_write_failures": 2}
    assert g.window_report() == {"disk_full": False, "disk_write_failures": 0}


def test_sqlite_full_is_recognised() -> None:
    import sqlite3

    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    assert not is_disk_full(sqlite3.OperationalError("no such table: outbox"))


@pytest.mark.slow
def test_uplink_survives_outbox_acks_failing_on_a_full_disk(small_disk: Path, tmp_path: Path, fleet_keys) -> None:
    """Queued events reach a broker that comes up while the disk is full (their acks cannot be
    written), and once space returns new events still flow: the send loop did not die."""
    from tests.agent.conftest import PrivateBroker, Subscriber

    broker = PrivateBroker(tmp_path)
    a = Agent(make_config(small_disk / "state", fleet_keys["pub"], device_id="disk-3", mqtt_url=broker.url)).start()
    sub = None
    try:
        for i in range(30):
            a.emit_event("queued-before-full", details={"i": i})
        filler = fill(small_disk)
        broker.start()
        sub = Subscriber(broker.url, "edgefleet/#")

        def kinds() -> list[str]:
            return [p["payload"]["kind"] for p in sub.payloads("/events")]  # type: ignore[union-attr]
        wait_for(lambda: kinds().count("queued-before-full") >= 30, 30, what="queued events delivered")
        time.sleep(1.0)  # the send loop has tried to delete the acknowledged rows on the full disk
        filler.unlink()
        a.emit_event("after-space-returned")
        wait_for(lambda: "after-space-returned" in kinds(), 30, what="an event sent after the disk recovered")
        wait_for(lambda: len(a.outbox) == 0, 30, what="the delivered rows deleted once space returned")
    finally:
        if sub is not None:
            sub.close()
        a.stop()
        broker.stop()


def test_command_worker_survives_a_full_disk(small_disk: Path, fleet_keys) -> None:
    """A command whose answer cannot be saved on the full disk must not stop the command worker."""
    a = Agent(make_config(small_disk / "state", fleet_keys["pub"], device_id="disk-4")).start()
    try:
        filler = fill(small_disk)
        a.commands._queue.put({"kind": "stop-candidate", "id": "while-full", "seq": 1})
        wait_for(lambda: (a.commands.last_command or {}).get("id") == "while-full", 10,
                 what="the command run on the full disk")
        time.sleep(0.3)  # its answer could not be saved
        filler.unlink()
        a.commands._queue.put({"kind": "stop-candidate", "id": "after-space-returned", "seq": 2})
        wait_for(lambda: (a.commands.last_command or {}).get("id") == "after-space-returned", 10,
                 what="a command executed after the disk recovered")
        assert a.commands._thread.is_alive()
    finally:
        a.stop()
