"""The MQTT connection: paho-mqtt 2.x (CallbackAPIVersion.VERSION2), MQTT 5 when the broker
speaks it, 3.1.1 otherwise.

* Connects in the background and retries with exponential backoff, so the agent serves even
  when no broker is reachable.
* Persistent session (MQTT 5 session expiry / 3.1.1 clean_session=False) so QoS 1 commands
  sent while the device was offline are delivered when it returns.
* Last Will: unsigned retained {"status": "offline"} on .../state.
* With `hold_until_ingest`, it subscribes to its fleet's ingest status topics (retained, Last
  Will offline) and drains the outbox only while at least one ingest worker is online: after a
  broker restart (no retained messages, no sessions) windows stay in the outbox until ingest has
  resubscribed and announced itself, instead of being published to nobody.
* A pump thread sends the outbox oldest first with QoS 1 and deletes a row only when its PUBACK
  arrives; after a reconnect everything unacknowledged is sent again (consumers de-duplicate on
  (device, seq)).
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import MqttConfig
from agent.outbox import Outbox
from agent.protocol import ingest_status_topic, topic
from agent.retry import reconnect_bounds

log = logging.getLogger(__name__)

_UNSUPPORTED_PROTOCOL = {132, 1}  # MQTT 5 "Unsupported Protocol Version", 3.1.1 CONNACK 1


@dataclass
class LinkSettings:
    """The device's broker configuration plus who it is on the broker."""

    mqtt: MqttConfig
    client_id: str
    fleet: str
    device: str
    max_inflight: int = 20


class MqttLink:
    def __init__(self, settings: LinkSettings, outbox: Outbox,
                 on_command: Callable[[bytes], None], on_connect: Callable[[], None] | None = None) -> None:
        self.s = settings
        self.outbox = outbox
        self.on_command = on_command
        self.on_connected = on_connect
        self.state_topic = topic(settings.fleet, settings.device, "state")
        self.cmd_topic = topic(settings.fleet, settings.device, "cmd")
        self.connected = threading.Event()
        self.ingest_topics = ingest_status_topic(settings.fleet)
        self.ingest_online: set[str] = set()   # status topics of ingest workers that said online
        self.protocol = mqtt.MQTTv5 if settings.mqtt.protocol in ("auto", "5") else mqtt.MQTTv311
        self._inflight: dict[int, tuple[int, Any]] = {}  # mid -> (outbox row id, MQTTMessageInfo)
        self._ack_retry: list[int] = []  # delivered rows whose delete failed (a full disk): retried
        self._last_sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._client: mqtt.Client | None = None
        self._pump = threading.Thread(target=self._pump_loop, name="mqtt-pump", daemon=True)
        self._rebuild = threading.Event()
        self.published_acks = 0

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._client = self._make_client()
        self._pump.start()
        threading.Thread(target=self._supervise, name="mqtt-supervisor", daemon=True).start()

    def stop(self, final_state: bytes | None = None) -> None:
        c = self._client
        if c is not None and final_state is not None and self.connected.is_set():
            try:
                c.publish(self.state_topic, final_state, qos=1, retain=True).wait_for_publish(timeout=2)
            except (RuntimeError, ValueError):
                pass
        self._stop.set()
        self.outbox.new_message.set()
        if c is not None:
            c.disconnect()
            c.loop_stop()
        self._pump.join(timeout=5)

    def _make_client(self) -> mqtt.Client:
        s = self.s.mqtt
        u = urlparse(s.url)
        kwargs: dict[str, Any] = {"callback_api_version": mqtt.CallbackAPIVersion.VERSION2,
                                  "client_id": self.s.client_id, "protocol": self.protocol}
        if self.protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = False
        c = mqtt.Client(**kwargs)
        c.enable_logger(logging.getLogger("paho"))
        if s.username:
            c.username_pw_set(s.username, s.password or None)
        if u.scheme == "mqtts":
            c.tls_set(ca_certs=s.ca_file or None, certfile=s.cert_file or None, keyfile=s.key_file or None,
                      tls_version=ssl.PROTOCOL_TLS_CLIENT)
        c.will_set(self.state_topic, json.dumps({"status": "offline"}).encode(), qos=1, retain=True)
        lo, hi = reconnect_bounds(s.reconnect_min_s, s.reconnect_max_s)   # jittered: no lockstep reconnects
        c.reconnect_delay_set(min_delay=lo, max_delay=hi)  # type: ignore[arg-type]  # paho's arithmetic is float
        c.max_inflight_messages_set(self.s.max_inflight)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        port = u.port or (8883 if u.scheme == "mqtts" else 1883)
        connect_kwargs: dict[str, Any] = {"keepalive": s.keepalive_s}
        if self.protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 7 * 24 * 3600
            connect_kwargs.update(clean_start=False, properties=props)
        c.connect_async(u.hostname or "", port, **connect_kwargs)  # config.validate checked the host
        c.loop_start()
        log.info("event=mqtt-connecting url=%s protocol=%s", s.url, "5" if self.protocol == mqtt.MQTTv5 else "3.1.1")
        return c

    def _supervise(self) -> None:
        """Rebuild the client with MQTT 3.1.1 when the broker refuses version 5."""
        while not self._stop.is_set():
            if self._rebuild.wait(timeout=0.5) and not self._stop.is_set():
                self._rebuild.clear()
                old = self._client
                if old is not None:
                    old.loop_stop()
                    old.disconnect()
                self.protocol = mqtt.MQTTv311
                self._client = self._make_client()

    # -- callbacks (paho's network thread) ----------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            value = getattr(reason_code, "value", None)
            log.warning("event=mqtt-connect-refused reason=%s", reason_code)
            if self.s.mqtt.protocol == "auto" and self.protocol == mqtt.MQTTv5 and value in _UNSUPPORTED_PROTOCOL:
                self._rebuild.set()
            return
        log.info("event=mqtt-connected protocol=%s", "5" if self.protocol == mqtt.MQTTv5 else "3.1.1")
        client.subscribe(self.cmd_topic, qos=1)
        with self._lock:
            self._inflight.clear()
            self._last_sent = 0
            self.ingest_online.clear()   # the broker re-sends what is retained, if it still has it
        if self.s.mqtt.hold_until_ingest:
            client.subscribe(self.ingest_topics, qos=1)
        self.connected.set()
        if self.on_connected is not None:
            threading.Thread(target=self.on_connected, name="mqtt-on-connect", daemon=True).start()
        self.outbox.new_message.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        if self.connected.is_set():
            log.warning("event=mqtt-disconnected reason=%s", reason_code)
        self.connected.clear()
        with self._lock:
            self._inflight.clear()
            self._last_sent = 0

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        # The pump acks rows by polling each message's info (set right after this callback), which
        # avoids taking our lock inside paho's lock.
        self.outbox.new_message.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.cmd_topic:
            try:
                self.on_command(bytes(msg.payload))
            except Exception:
                log.exception("event=command-dispatch-failed")
        elif mqtt.topic_matches_sub(self.ingest_topics, msg.topic):
            self._ingest_status(msg.topic, bytes(msg.payload))

    def _ingest_status(self, topic_: str, payload: bytes) -> None:
        try:
            online = json.loads(payload).get("status") == "online" if payload else False
        except (ValueError, AttributeError):
            online = False
        with self._lock:
            before = bool(self.ingest_online)
            (self.ingest_online.add if online else self.ingest_online.discard)(topic_)
            now = bool(self.ingest_online)
        if before != now:
            log.info("event=ingest-%s topic=%s", "online" if now else "offline-holding-outbox", topic_)
            self.outbox.new_message.set()

    def may_drain(self) -> bool:
        """Send the outbox now? Always when connected, unless holding until an ingest is online."""
        return self.connected.is_set() and (not self.s.mqtt.hold_until_ingest or bool(self.ingest_online))

    # -- sending ------------------------------------------------------------------------------
    def publish_now(self, topic_: str, payload: bytes, retain: bool = False) -> bool:
        """Fire-and-track publish outside the outbox (retained state): best effort."""
        c = self._client
        if c is None or not self.connected.is_set():
            return False
        return c.publish(topic_, payload, qos=1, retain=retain).rc == mqtt.MQTT_ERR_SUCCESS

    def _sweep_acked(self) -> None:
        with self._lock:
            done = [(mid, row) for mid, (row, info) in self._inflight.items() if info.is_published()]
            for mid, _ in done:
                del self._inflight[mid]
            rows, self._ack_retry = self._ack_retry + [row for _, row in done], []
        for i, row in enumerate(rows):
            try:
                self.outbox.ack(row)
            except Exception as exc:  # e.g. a full disk: the send loop must live on; retry next sweep
                with self._lock:
                    first = not self._ack_retry
                    self._ack_retry = rows[i:] + self._ack_retry
                if first:
                    log.warning("event=outbox-ack-failed rows=%d error=%s", len(rows) - i, exc)
                return
            self.published_acks += 1

    def _pump_loop(self) -> None:
        while not self._stop.is_set():
            self.outbox.new_message.wait(timeout=0.2)
            self.outbox.new_message.clear()
            self._sweep_acked()
            while self.may_drain() and not self._stop.is_set():
                with self._lock:
                    room = self.s.max_inflight - len(self._inflight)
                    after = self._last_sent
                if room <= 0:
                    break
                batch = self.outbox.pending(after, room)
                if not batch:
                    break
                c = self._client
                for m in batch:
                    if c is None or not self.connected.is_set():
                        break
                    # Never hold self._lock while calling paho (its network thread holds paho's
                    # locks while running callbacks).
                    info = c.publish(m.topic, m.payload, qos=1, retain=m.retain)
                    if info.rc != mqtt.MQTT_ERR_SUCCESS:
                        break
                    with self._lock:
                        self._inflight[info.mid] = (m.id, info)
                        self._last_sent = m.id
                self._sweep_acked()
