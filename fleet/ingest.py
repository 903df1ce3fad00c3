"""Telemetry ingest service: MQTT subscriber -> bounded queue -> writer thread -> fleet.ingest_store.

* MQTT 5 brokers: a shared subscription ($share/<group>/...) for telemetry and events, so
  several ingest processes split the load; state is subscribed directly (retained messages are
  not delivered through shared subscriptions, and state updates are idempotent by seq).
* MQTT 3.1.1: plain subscriptions (run one ingest process).
* Malformed, oversized, unknown-device and wrongly signed messages are counted by reason and
  dropped (fleet.ingest_store.Processor); ingest never crashes on them.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any

from sqlalchemy.engine import Engine

from fleet.broker import parse_mqtt_url, speaks_mqtt5
from fleet.ingest_store import IngestStats, Processor
from fleet.settings import FleetSettings

log = logging.getLogger(__name__)
__all__ = ["IngestService", "IngestStats", "Processor", "run_forever"]


class IngestService:
    """The MQTT side: one paho client feeding a bounded queue drained by a writer thread."""

    def __init__(self, settings: FleetSettings, engine: Engine, *, client_id: str | None = None) -> None:
        self.settings = settings
        self.processor = Processor(settings, engine)
        self.queue: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=settings.ingest.queue_size)
        self.client_id = client_id or f"edgefleet-ingest-{os.getpid()}-{time.time_ns() % 10**9}"
        self.mqtt5 = False
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._client: Any = None

    @property
    def stats(self) -> IngestStats:
        return self.processor.stats

    def forget_device(self, device_id: str) -> None:
        self.processor.forget_device(device_id)

    def topics(self) -> list[str]:
        base = f"edgefleet/v1/{self.settings.fleet_id}/+"
        shared = self.mqtt5 and self.settings.ingest.use_shared
        prefix = f"$share/{self.settings.ingest.shared_group}/" if shared else ""
        return [f"{prefix}{base}/telemetry", f"{prefix}{base}/events", f"{base}/state"]

    def start(self, timeout: float = 10.0) -> IngestService:
        import paho.mqtt.client as mqtt

        host, port = parse_mqtt_url(self.settings.mqtt_url)
        self.mqtt5 = speaks_mqtt5(host, port)
        proto = mqtt.MQTTv5 if self.mqtt5 else mqtt.MQTTv311
        persistent = self.settings.ingest.session_expiry_s > 0
        kwargs: dict[str, Any] = {} if self.mqtt5 else {"clean_session": not persistent}
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=proto, **kwargs)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.max_inflight_messages_set(1000)
        self._client = client
        self._writer = threading.Thread(target=self._write_loop, name="edgefleet-ingest-writer", daemon=True)
        self._writer.start()
        if self.mqtt5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.settings.ingest.session_expiry_s
            props.ReceiveMaximum = 65535
            client.connect(host, port, keepalive=30, clean_start=not persistent, properties=props)
        else:
            client.connect(host, port, keepalive=30)
        client.loop_start()
        if not self.subscribed.wait(timeout):
            self.stop()
            raise RuntimeError(f"ingest could not subscribe at {host}:{port}")
        log.info("ingest subscribed", extra={"mqtt5": self.mqtt5, "topics": self.topics()})
        return self

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            log.error("ingest connect refused: %s", rc)
            return
        self.connected.set()
        client.subscribe([(t, 1) for t in self.topics()])
        if getattr(flags, "session_present", False):
            # A resumed persistent session already holds the subscriptions, and the broker may
            # deliver a long backlog before the SUBACK: do not make start() wait for it.
            self.subscribed.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, rcs: Any, props: Any = None) -> None:
        failed = [rc for rc in rcs if rc.is_failure]
        if failed:
            log.error("ingest subscription refused: %s", failed)
        self.subscribed.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("ingest disconnected (%s); paho reconnects", rc)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        # Blocks when the writer falls behind: back-pressure reaches the broker via TCP.
        while not self._stop.is_set():
            try:
                self.queue.put((msg.topic, msg.payload), timeout=0.5)
                return
            except queue.Full:
                continue

    def _write_loop(self) -> None:
        cfg = self.settings.ingest
        while not (self._stop.is_set() and self.queue.empty()):
            try:
                first = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            deadline = time.monotonic() + cfg.batch_wait_s
            while len(batch) < cfg.batch_size:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    if time.monotonic() >= deadline:
                        break
                    time.sleep(0.002)
            try:
                self.processor.process(batch)
            except Exception:  # noqa: BLE001
                log.exception("ingest batch failed")

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until the queue is empty and the writer idle (tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.queue.unfinished_tasks == 0 or self.queue.empty():
                time.sleep(0.1)
                if self.queue.empty():
                    return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        self._stop.set()
        if self._client is not None:
            try:
                self._client.disconnect()
            finally:
                self._client.loop_stop()
        if self._writer is not None:
            self._writer.join(10)


def run_forever(settings: FleetSettings) -> None:
    """`fleet ingest`: run one ingest process until interrupted."""
    from fleet.db import init_db, make_engine

    engine = make_engine(settings.database_url, data_dir=settings.data_dir)
    init_db(engine)
    svc = IngestService(settings, engine).start()
    try:
        while True:
            time.sleep(5)
            log.info("ingest stats %s", svc.stats.snapshot())
    except KeyboardInterrupt:
        pass
    finally:
        svc.stop()
