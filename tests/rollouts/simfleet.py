"""Many simulated devices behind one paho client: it subscribes to every device's cmd topic of
the fleet, answers commands through SimDevice.handle, publishes retained signed state, and sends
one telemetry window per device every `window_s` seconds of real time. Used by the MQTT
end-to-end tests and (several per process) by benchmarks/rollout_bench.py.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt

from agent.protocol import parse_topic
from tests.rollouts.simdevice import SimDevice

log = logging.getLogger(__name__)


class MqttSimFleet:
    def __init__(self, sims: Iterable[SimDevice], fleet: str, *, host: str = "127.0.0.1", port: int = 1883,
                 window_s: float = 1.0, client_id: str = "",
                 on_command: Callable[[str, dict[str, Any], float], None] | None = None) -> None:
        self.sims = {s.device_id: s for s in sims}
        self.fleet = fleet
        self.window_s = window_s
        self.on_command = on_command
        self.lock = threading.Lock()
        self.commands: list[tuple[float, str, dict[str, Any]]] = []   # (received_at, device, doc)
        self.windows_sent = 0
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                   client_id=client_id or f"simfleet-{fleet}-{time.time_ns() % 10**9}")
        self._client.max_inflight_messages_set(2000)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.on_message = self._on_message
        self._host, self._port = host, port
        self._thread: threading.Thread | None = None

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        client.subscribe(f"edgefleet/v1/{self.fleet}/+/cmd", qos=1)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            _, dev, _ = parse_topic(msg.topic)
        except ValueError:
            return
        sim = self.sims.get(dev)
        if sim is None:
            return
        at = time.time()
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            doc = {}
        with self.lock:
            self.commands.append((at, dev, doc))
            out = sim.handle(msg.payload, now=at)
        if self.on_command is not None:
            self.on_command(dev, doc, at)
        self._send(out)

    def _send(self, messages: list[tuple[str, bytes]]) -> None:
        for t, raw in messages:
            self._client.publish(t, raw, qos=1, retain=t.endswith("/state"))

    def start(self, timeout: float = 10.0) -> MqttSimFleet:
        self._client.connect(self._host, self._port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            raise RuntimeError("simulated fleet could not subscribe")
        with self.lock:
            states = [s.state() for s in self.sims.values() if not s.silent]
        self._send(states)
        self._thread = threading.Thread(target=self._telemetry_loop, name="simfleet-telemetry", daemon=True)
        self._thread.start()
        return self

    def _telemetry_loop(self) -> None:
        nxt = time.time() + self.window_s
        while not self._stop.wait(max(0.0, nxt - time.time())):
            end = nxt
            nxt += self.window_s
            msgs: list[tuple[str, bytes]] = []
            with self.lock:
                for s in self.sims.values():
                    msgs.extend(s.telemetry(end - self.window_s, end))
                self.windows_sent += 1
            self._send(msgs)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._client.disconnect()
        self._client.loop_stop()
