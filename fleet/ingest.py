"""Telemetry ingest service: MQTT subscriber -> bounded queue -> writer thread (parse, verify)
-> store thread -> fleet.ingest_store.

* MQTT 5 brokers: a shared subscription ($share/<group>/...) for telemetry and events, so
  several ingest processes split the load; state is subscribed directly (retained messages are
  not delivered through shared subscriptions, and state updates are idempotent by seq).
* MQTT 3.1.1: plain subscriptions (run one ingest process).
* Malformed, oversized, unknown-device and wrongly signed messages are counted by reason and
  dropped (fleet.ingest_store.Processor); ingest never crashes on them.
"""

from __future__ import annotations

import gc
import logging
import os
import queue
import threading
import time
from typing import Any

from sqlalchemy.engine import Engine

from fleet.broker import broker_address, speaks_mqtt5
from fleet.ingest_store import IngestStats, Processor
from fleet.mqtt_client import BufferedClient
from fleet.settings import FleetSettings

log = logging.getLogger(__name__)
__all__ = ["IngestService", "IngestStats", "Processor", "run_forever"]


class IngestService:
    """The MQTT side: one paho client feeding a bounded queue, drained by a writer thread that
    verifies batches and a store thread that writes them."""

    def __init__(self, settings: FleetSettings, engine: Engine, *, client_id: str | None = None) -> None:
        self.settings = settings
        self.processor = Processor(settings, engine)
        self.queue: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=settings.ingest.queue_size)
        self.client_id = client_id or f"edgefleet-ingest-{os.getpid()}-{time.time_ns() % 10**9}"
        self.mqtt5 = False
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._stop = threading.Event()
        # parsed batches waiting for the store thread: two at most, then the writer waits too
        self._verified: queue.Queue[tuple[list[Any], int] | None] = queue.Queue(maxsize=2)
        self._writer: threading.Thread | None = None
        self._storer: threading.Thread | None = None
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

        addr = broker_address(self.settings.mqtt_url, self.settings.mqtt_ca_file)
        host, port = addr.host, addr.port
        self.mqtt5 = speaks_mqtt5(host, port, address=addr)
        proto = mqtt.MQTTv5 if self.mqtt5 else mqtt.MQTTv311
        persistent = self.settings.ingest.session_expiry_s > 0
        kwargs: dict[str, Any] = {} if self.mqtt5 else {"clean_session": not persistent}
        client = BufferedClient(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=proto, **kwargs)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.max_inflight_messages_set(1000)
        addr.configure(client)
        self._client = client
        tune_gc()
        self._writer = threading.Thread(target=self._write_loop, name="edgefleet-ingest-writer", daemon=True)
        self._storer = threading.Thread(target=self._store_loop, name="edgefleet-ingest-store", daemon=True)
        self._writer.start()
        self._storer.start()
        props = None
        if self.mqtt5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.settings.ingest.session_expiry_s
            props.ReceiveMaximum = 65535
        try:
            if self.mqtt5:
                client.connect(host, port, keepalive=30, clean_start=not persistent, properties=props)
            else:
                client.connect(host, port, keepalive=30)
        except OSError as exc:  # refused, unreachable, TLS verification failed
            self.stop()
            raise RuntimeError(f"ingest cannot connect to the broker {addr!r}: {exc}") from exc
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
        """First stage: batches off the queue, parsed and verified, handed to the store thread
        (which waits on the database meanwhile, so the two overlap)."""
        cfg = self.settings.ingest
        last_gc = time.monotonic()
        try:
            while not (self._stop.is_set() and self.queue.empty()):
                if time.monotonic() - last_gc > FULL_GC_EVERY_S:
                    gc.collect()
                    last_gc = time.monotonic()
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
                    parsed = self.processor.parse_many(batch)
                except Exception:  # noqa: BLE001
                    log.exception("ingest batch failed")
                    parsed = []
                self._verified.put((parsed, len(batch)))
        finally:
            self._verified.put(None)

    def _store_loop(self) -> None:
        while (item := self._verified.get()) is not None:
            parsed, n = item
            try:
                self.processor.store(parsed)
            except Exception:  # noqa: BLE001
                log.exception("ingest batch failed")
            with self.queue.all_tasks_done:  # queue.task_done() n times, under one lock
                self.queue.unfinished_tasks -= n
                if self.queue.unfinished_tasks <= 0:
                    self.queue.all_tasks_done.notify_all()

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every message received so far is stored or dropped (tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.queue.unfinished_tasks == 0:
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
        for t in (self._writer, self._storer):
            if t is not None:
                t.join(10)


GC_THRESHOLD = 100_000
FULL_GC_EVERY_S = 300.0


def tune_gc() -> None:
    """Ingest allocates about a hundred containers per message (the parsed JSON): at CPython's
    default threshold (700) that is a young collection every few messages and a full one, which
    walks the whole heap (~75 ms in a fleet process), every few hundred: a quarter to a third of
    the CPU at full load. The payloads are trees freed by reference counting, so collect rarely;
    the writer runs a full collection every FULL_GC_EVERY_S for the cycles the rest leaves."""
    g0, g1, g2 = gc.get_threshold()
    gc.set_threshold(max(g0, GC_THRESHOLD), max(g1, 20), max(g2, 100))


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
