"""Telemetry ingest service: MQTT subscriber -> bounded queue -> writer thread (parse, verify)
-> store thread -> fleet.ingest.store.

* MQTT 5 brokers: a shared subscription ($share/<group>/...) for telemetry and events, so
  several ingest processes split the load; state is subscribed directly (retained messages are
  not delivered through shared subscriptions, and state updates are idempotent by seq).
* MQTT 3.1.1: plain subscriptions (run one ingest process).
* Identity: with a persistent session (ingest.session_expiry_s > 0) the client id is stable,
  `edgefleet-ingest-<ingest.name>` (default: fleet id and host name), so a restarted process
  resumes its session and receives what the broker queued meanwhile; a new id per process
  would leave each dead session in the $share group, taking its share of telemetry until it
  expires. Reconnects are fast (RECONNECT_MIN_S..RECONNECT_MAX_S), and a heartbeat row tells
  the rollout evaluator whether ingest sees the devices (fleet.ingest.health).
* Status for devices: once subscribed, each worker publishes a retained "online" on
  `edgefleet/ingest/<fleet>/<client id>/status` (Last Will: retained "offline"; a graceful stop
  clears it). Agents with `mqtt.hold_until_ingest` drain their outbox only while one is online,
  so windows flushed after a broker restart are not dropped before ingest resubscribes.
* Receiving: the MQTT thread hands each read's messages on as one batch (fleet.ingest.mqtt_client,
  fleet.ingest.inbox); the writer takes up to ingest.batch_size of them, waiting at most
  ingest.batch_wait_s for a batch to fill, so the per-batch work (one transaction, one aggregate
  merge) is shared by many messages even when they trickle in.
* Malformed, oversized, unknown-device and wrongly signed messages are counted by reason and
  dropped (fleet.ingest.store.Processor); ingest never crashes on them.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import queue
import socket
import threading
import time
from typing import Any

from sqlalchemy.engine import Engine

from agent.protocol import ingest_status_topic
from fleet.ingest.broker import broker_address, speaks_mqtt5
from fleet.ingest.health import Heartbeat
from fleet.ingest.inbox import Inbox
from fleet.ingest.mqtt_client import BufferedClient
from fleet.ingest.store import IngestStats, Processor
from fleet.settings import FleetSettings

log = logging.getLogger(__name__)
__all__ = ["IngestService", "IngestStats", "Processor", "ingest_client_id", "run_forever"]
_OFFLINE = json.dumps({"status": "offline"}).encode()
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.5, 2   # paho's default backoff grows to 120 s: minutes of blindness
# After a read of a few messages the MQTT thread waits this long: fewer wake-ups (each costs a select,
# a recv and an ack write, ~0.3 ms of CPU on loopback) per message. Measured at 333 messages/s (the
# share of one of 3 ingest processes at 10,000 devices), MQTT thread CPU per message: 0.05 s 26.7 us,
# 0.1 s 18.3, 0.2 s 14.3; it adds at most 0.2 s to a window's ingest lag (benchmarks/scale_bench.py).
COALESCE_S = 0.2


def ingest_client_id(settings: FleetSettings, slot: str = "") -> str:
    """`edgefleet-ingest-<name>`: stable across restarts when the session is persistent (so it
    is resumed), unique per process otherwise (a clean session dies with its connection)."""
    configured = os.environ.get("EDGEFLEET_INGEST_NAME") or getattr(settings.ingest, "name", "")
    if settings.ingest.session_expiry_s <= 0 and not configured:
        return f"edgefleet-ingest-{os.getpid()}-{time.time_ns() % 10**9}"
    name = configured or f"{settings.fleet_id}-{socket.gethostname()}"
    return f"edgefleet-ingest-{name}" + (f"-{slot}" if slot else "")


class IngestService:
    """The MQTT side: one paho client feeding a bounded queue, drained by a writer thread that
    verifies batches and a store thread that writes them."""

    def __init__(self, settings: FleetSettings, engine: Engine, *, client_id: str | None = None,
                 slot: str = "") -> None:
        self.settings = settings
        self.processor = Processor(settings, engine)
        # (topic, payload, mid, connection generation): mid is acked once stored (persistent sessions)
        self.inbox = Inbox(settings.ingest.queue_size)
        self.client_id = client_id or ingest_client_id(settings, slot)
        self.status_topic = ingest_status_topic(settings.fleet_id, self.client_id)
        self.mqtt5 = False
        self.connected = threading.Event()
        self.connected_since: float | None = None
        self.heartbeat = Heartbeat(engine, self.client_id, settings.ingest.session_expiry_s, self._probe)
        self.subscribed = threading.Event()
        self._stop = threading.Event()
        # parsed batches waiting for the store thread: two at most, then the writer waits too
        self._verified: queue.Queue[tuple[list[Any], int, list[tuple[int, int]]] | None] = queue.Queue(maxsize=2)
        self._generation = 0        # bumped per connection: acks never cross into a new connection
        self.manual_ack = False
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
        # with a persistent MQTT 5 session a message is acknowledged once stored, so a crash loses
        # nothing the broker handed over (Receive Maximum keeps the pipe full meanwhile)
        self.manual_ack = persistent and self.mqtt5
        kwargs: dict[str, Any] = {} if self.mqtt5 else {"clean_session": not persistent}
        kwargs["manual_ack"] = self.manual_ack
        client = BufferedClient(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=proto, **kwargs)
        client.on_connect = self._on_connect
        if self.settings.ingest.receive == "batched":
            client.on_batch = self._on_batch
            client.coalesce_s = COALESCE_S
        else:
            client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.max_inflight_messages_set(1000)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.will_set(self.status_topic, _OFFLINE, qos=1, retain=True)
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
        log.info("ingest subscribed", extra={"mqtt5": self.mqtt5, "topics": self.topics(),
                                             "client_id": self.client_id})
        self.heartbeat.start()
        return self

    def _probe(self) -> tuple[bool, float | None, int]:
        return self.connected.is_set(), self.connected_since, self.inbox.unfinished

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            log.error("ingest connect refused: %s", rc)
            return
        self.connected_since = time.time()
        self._generation += 1
        self.connected.set()
        client.subscribe([(t, 1) for t in self.topics()])
        if getattr(flags, "session_present", False):
            # A resumed persistent session already holds the subscriptions, and the broker may
            # deliver a long backlog before the SUBACK: do not make start() wait for it.
            self.subscribed.set()
            self._announce(client)

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, rcs: Any, props: Any = None) -> None:
        failed = [rc for rc in rcs if rc.is_failure]
        if failed:
            log.error("ingest subscription refused: %s", failed)
        self.subscribed.set()
        if not failed:
            self._announce(client)

    def _announce(self, client: Any) -> None:
        """Retained "online" once subscribed (never before: devices holding their outbox for us
        would flush into a broker with no subscriber); the Last Will says offline."""
        client.publish(self.status_topic, json.dumps({"status": "online", "client_id": self.client_id,
                                                      "time": round(time.time(), 3)}).encode(), qos=1, retain=True)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self.connected.clear()
        self.connected_since = None
        if getattr(rc, "value", rc) == 142:  # MQTT 5 "session taken over": another process has our id
            log.error("ingest client id %s is in use by another process; give each ingest process its "
                      "own ingest.name", self.client_id)
        if not self._stop.is_set():
            log.warning("ingest disconnected (%s); paho reconnects", rc)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self._on_batch([(msg.topic, msg.payload, msg.mid if msg.qos else 0)])

    def _on_batch(self, messages: list[tuple[str, bytes, int]]) -> None:
        # Blocks when the writer falls behind: back-pressure reaches the broker via TCP.
        gen = self._generation
        self.inbox.put_many([(t, p, m, gen) for t, p, m in messages], self._stop)

    def _write_loop(self) -> None:
        """First stage: batches off the queue, parsed and verified, handed to the store thread
        (which waits on the database meanwhile, so the two overlap)."""
        cfg = self.settings.ingest
        last_gc = time.monotonic()
        try:
            while not (self._stop.is_set() and not len(self.inbox)):
                if time.monotonic() - last_gc > FULL_GC_EVERY_S:
                    gc.collect()
                    last_gc = time.monotonic()
                batch = self.inbox.take(cfg.batch_size, cfg.batch_wait_s, timeout=0.2)
                if not batch:
                    continue
                try:
                    parsed = self.processor.parse_many([(t, p) for t, p, _, _ in batch])
                except Exception:  # noqa: BLE001
                    log.exception("ingest batch failed")
                    parsed = []
                self._verified.put((parsed, len(batch), [(m, g) for _, _, m, g in batch]))
        finally:
            self._verified.put(None)

    def _store_loop(self) -> None:
        while (item := self._verified.get()) is not None:
            parsed, n, acks = item
            try:
                self.processor.store(parsed)
            except Exception:  # noqa: BLE001
                log.exception("ingest batch failed")
            if self.manual_ack and self._client is not None:
                self._client.ack_many([m for m, g in acks if g == self._generation and m])
            self.inbox.done(n)

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every message received so far is stored or dropped (tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.inbox.unfinished == 0:
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        self._stop.set()
        self.heartbeat.stop()
        if self._client is not None:
            try:
                if self.connected.is_set():  # gone for good: clear our retained status
                    self._client.publish(self.status_topic, b"", qos=1, retain=True).wait_for_publish(timeout=2)
            except (RuntimeError, ValueError):
                pass
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
