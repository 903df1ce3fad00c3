"""Issue 20, what was seen 2: bundle downloads retried three times in the same millisecond, so a
command that arrived just before a fleet restart failed for good (`download-failed ...
Connection reset by peer`). Now: exponential backoff with jitter over a time budget, resuming
with HTTP Range."""

from __future__ import annotations

import hashlib
import http.server
import random
import socket
import threading
import time
from pathlib import Path

import pytest

from agent.download import DownloadError, download
from agent.retry import Backoff

DATA = bytes(random.Random(0).randbytes(300_000))
SHA = hashlib.sha256(DATA).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    cut_first = False
    ranges: list[str | None] = []
    status = 200

    def do_GET(self) -> None:  # noqa: N802
        rng = self.headers.get("Range")
        type(self).ranges.append(rng)
        if type(self).status != 200:
            self.send_error(type(self).status)
            return
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        body = DATA[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(DATA) - 1}/{len(DATA)}")
        self.end_headers()
        if type(self).cut_first:
            type(self).cut_first = False
            self.wfile.write(body[:100_000])      # the fleet dies mid-transfer
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def log_message(self, *a: object) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(port: int, handler: type) -> http.server.ThreadingHTTPServer:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_a_download_survives_a_fleet_restart_and_resumes_with_range(tmp_path: Path):
    port = _free_port()

    class H(_Handler):
        cut_first, ranges = True, []

    srv = _serve(port, H)
    restarted: list[http.server.ThreadingHTTPServer] = []

    def restart() -> None:          # the fleet goes away for a moment, then comes back
        srv.shutdown()
        srv.server_close()
        time.sleep(1.5)
        restarted.append(_serve(port, H))

    slept: list[float] = []

    def sleep(d: float) -> None:
        slept.append(d)
        if len(slept) == 1:
            threading.Thread(target=restart, daemon=True).start()
            time.sleep(0.3)                   # the port is closed now
        time.sleep(d)

    try:
        out = download(f"http://127.0.0.1:{port}/a.bundle", tmp_path / "a.bundle", expected_size=len(DATA),
                       expected_sha256=SHA, max_bytes=10**7, timeout_s=5,
                       backoff=Backoff(base_s=0.2, cap_s=1.0, budget_s=30, rng=random.Random(1)), sleep=sleep)
    finally:
        for s in restarted:
            s.shutdown()
            s.server_close()
    assert out.read_bytes() == DATA
    assert H.ranges[0] is None and H.ranges[-1] == "bytes=100000-"   # resumed, not started over
    assert len(slept) >= 2                    # kept retrying while the fleet was down (1.5 s)


def test_backoff_grows_exponentially_with_jitter_within_its_budget():
    now = [0.0]
    b = Backoff(base_s=0.5, cap_s=8, budget_s=60, rng=random.Random(3), clock=lambda: now[0])
    delays = []
    for d in b.delays():
        delays.append(d)
        now[0] += d
    assert delays[0] >= 0.25 and delays[0] <= 0.5
    assert all(0.5 * min(8, 0.5 * 2 ** i) <= d <= min(8, 0.5 * 2 ** i) + 1e-9
               for i, d in enumerate(delays[:-1]))
    assert 60 - 1e-6 <= sum(delays) <= 60 + 1e-6                       # retries for the whole budget
    assert len({round(d, 6) for d in delays}) == len(delays)


def test_a_definite_http_answer_is_not_retried(tmp_path: Path):
    port = _free_port()

    class H(_Handler):
        status, ranges = 404, []

    srv = _serve(port, H)
    try:
        with pytest.raises(DownloadError):
            download(f"http://127.0.0.1:{port}/x", tmp_path / "x", expected_size=None, expected_sha256=None,
                     max_bytes=10**6, sleep=lambda d: pytest.fail("a 404 must not be retried"))
    finally:
        srv.shutdown()
        srv.server_close()
    assert len(H.ranges) == 1


def test_mqtt_reconnect_delays_are_jittered_per_device(tmp_path: Path):
    """Issue 20, build 2: paho doubles a fixed delay (min 1 s, same on every device), so a fleet
    that lost its broker reconnected in lockstep. Each link now draws its own bounds."""
    from agent.config import MqttConfig
    from agent.mqtt_link import LinkSettings, MqttLink
    from agent.outbox import Outbox
    from agent.retry import reconnect_bounds

    drawn = [reconnect_bounds(0.5, 30.0, random.Random(seed)) for seed in range(20)]
    assert all(0.5 <= lo <= 1.0 and 15.0 <= hi <= 30.0 for lo, hi in drawn)
    assert len({lo for lo, _ in drawn}) == 20 and len({hi for _, hi in drawn}) == 20
    # the agent's MQTT link applies them (a broker that is not there: nothing connects)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mins = []
    for i in range(3):
        link = MqttLink(LinkSettings(MqttConfig(url=f"mqtt://127.0.0.1:{port}"), f"dev-{i}", "f", f"dev-{i}"),
                        Outbox(tmp_path / f"outbox-{i}.db"), on_command=lambda b: None)
        c = link._make_client()
        try:
            mins.append(c._reconnect_min_delay)
            assert 0.5 <= c._reconnect_min_delay <= 1.0 and 15.0 <= c._reconnect_max_delay <= 30.0
        finally:
            c.loop_stop()
    assert len(set(mins)) == 3
