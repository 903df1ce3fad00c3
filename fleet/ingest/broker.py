"""MQTT broker helpers: parse URLs, probe for MQTT 5, and the embedded default broker
(a private `mosquitto` on a free port when the binary exists, else amqtt in-process, 3.1.1 only)."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)
DEFAULT_URL = "mqtt://127.0.0.1:1883"


@dataclass(frozen=True)
class BrokerAddress:
    """Where the fleet's own MQTT clients connect, and how they log in (mqtt[s]://user:pass@host:port)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str = ""

    def configure(self, client: Any) -> None:
        """Credentials and TLS on a paho client, before connect()."""
        if self.username:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            import ssl

            client.tls_set(ca_certs=self.ca_file or None, tls_version=ssl.PROTOCOL_TLS_CLIENT)

    def __repr__(self) -> str:  # never print the password (an API token)
        return f"BrokerAddress({'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}, user={self.username!r})"


def broker_address(url: str | None, ca_file: str = "") -> BrokerAddress:
    from urllib.parse import unquote

    u = urlparse(url or DEFAULT_URL)
    if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl", ""):
        raise ValueError(f"unsupported MQTT URL scheme {u.scheme!r} (use mqtt://host:port or mqtts://host:port)")
    tls = u.scheme in ("mqtts", "ssl")
    return BrokerAddress(u.hostname or "127.0.0.1", u.port or (8883 if tls else 1883),
                         unquote(u.username) if u.username else None,
                         unquote(u.password) if u.password else None, tls, ca_file)


def parse_mqtt_url(url: str | None) -> tuple[str, int]:
    a = broker_address(url)
    return a.host, a.port


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def speaks_mqtt5(host: str, port: int, timeout: float = 3.0, address: BrokerAddress | None = None) -> bool:
    """Connect once with MQTT 5; False when the broker refuses or drops the connection."""
    import paho.mqtt.client as mqtt

    done = threading.Event()
    result: dict[str, bool] = {"ok": False}

    def on_connect(client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        result["ok"] = not rc.is_failure
        done.set()

    def on_disconnect(*_a: Any) -> None:
        done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgefleet-probe-{time.time_ns()}",
                    protocol=mqtt.MQTTv5)
    c.on_connect, c.on_disconnect = on_connect, on_disconnect
    if address is not None:
        address.configure(c)
    try:
        c.connect(host, port, keepalive=10)
    except OSError:
        return False
    c.loop_start()
    try:
        done.wait(timeout)
    finally:
        try:
            c.disconnect()
        finally:
            c.loop_stop()
    return result["ok"]


@dataclass
class EmbeddedBroker:
    host: str
    port: int
    kind: str  # "mosquitto" | "amqtt"
    _proc: subprocess.Popen[bytes] | None = None
    _thread: threading.Thread | None = None
    _stop: Any = None
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
        if self._stop is not None:
            self._stop()
            self._stop = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reachable("127.0.0.1", port, 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"embedded broker did not listen on port {port}")


def start_embedded_broker(prefer: str = "mosquitto") -> EmbeddedBroker:
    """Start a private broker on a free localhost port (for the demo and development)."""
    port = free_port()
    binary = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if prefer == "mosquitto" and binary:
        tmp = tempfile.TemporaryDirectory(prefix="edgefleet-mosquitto-")
        conf = Path(tmp.name) / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        "max_queued_messages 1000000\nmax_inflight_messages 1000\nlog_dest none\n")
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_listening(port)
        log.info("embedded mosquitto on port %d", port)
        return EmbeddedBroker("127.0.0.1", port, "mosquitto", _proc=proc, _tmp=tmp)
    return _start_amqtt(port)


def _start_amqtt(port: int) -> EmbeddedBroker:
    import asyncio

    from amqtt.broker import Broker

    loop = asyncio.new_event_loop()
    config = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
              "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}
    broker_holder: dict[str, Any] = {}
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            b = Broker(config)
            await b.start()
            broker_holder["b"] = b
            started.set()

        loop.run_until_complete(main())
        loop.run_forever()

    t = threading.Thread(target=run, name="amqtt-broker", daemon=True)
    t.start()
    if not started.wait(15):
        raise RuntimeError("amqtt broker did not start")
    _wait_listening(port)

    def stop() -> None:
        fut = asyncio.run_coroutine_threadsafe(broker_holder["b"].shutdown(), loop)
        try:
            fut.result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            t.join(5)

    log.info("embedded amqtt broker on port %d (MQTT 3.1.1 only)", port)
    return EmbeddedBroker("127.0.0.1", port, "amqtt", _thread=t, _stop=stop)
