"""Ingest storage: verify messages (fleet.ingest.verification) and write them in batches.

Idempotent on (device, seq): the window rows and the aggregate update commit in the same
transaction, and aggregates only grow by the rows really inserted. No MQTT here: the service in
fleet.ingest.service feeds it, and tests and benchmarks call it directly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from orjson import dumps
from sqlalchemy import delete, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from agent.protocol import EVENT_SCHEMA, STATE_SCHEMA, ProtocolError, parse_topic
from fleet import ops_metrics
from fleet.ingest import aggregate, fastjson
from fleet.ingest.aggregate import Hist
from fleet.ingest.aggregate_store import AggregateWriter
from fleet.ingest.device_cache import DeviceCache, DeviceInfo
from fleet.ingest.records import store_events, store_states
from fleet.ingest.rollout_view import RolloutView
from fleet.ingest.stats import IngestStats, Tally
from fleet.ingest.trust import TrustPolicy, quarantine
from fleet.ingest.verification import (
    MAX_INT,
    check_telemetry,
    decode_plain,
    decode_telemetry,
    fast_verify,
    open_signed,
    trusted_payload,
)
from fleet.ingest.window_insert import AGGREGATE_KEY, END, PAYLOAD, START, Row, WindowInserter
from fleet.models import Device, TelemetryWindow, now
from fleet.settings import FleetSettings

log = logging.getLogger(__name__)
KINDS = ("telemetry", "state", "events")


@dataclass(slots=True)
class _Parsed:
    kind: str
    device: str
    payload: dict[str, Any] | None  # None for the unsigned Last Will {"status": "offline"}
    info: DeviceInfo | None = None
    hist: Hist | None = None  # telemetry: the histograms, flattened by the checks


_DEVICE = Device.__table__  # type: ignore[attr-defined]


MIN_PER_THREAD = 32  # smaller batches are verified by the calling thread alone
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _verify_pool(workers: int) -> ThreadPoolExecutor:
    """One process-wide pool for signature checks, grown to the largest size asked for."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < workers:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="edgefleet-verify")
        return _pool


class Processor:
    """Verification and batched storage; no MQTT here (tests and benchmarks call it directly)."""

    def __init__(self, settings: FleetSettings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.stats = IngestStats()
        self.devices = DeviceCache(settings, engine)
        self._windows = WindowInserter(engine)
        self._aggregates = AggregateWriter(engine)
        self._rollouts = RolloutView(engine)
        self._last_prune = 0.0
        self._aggregate_cpu = 0.0  # of the batch being stored (one store thread)
        self.trust = TrustPolicy(settings.ingest.verify, settings.ingest.sample_rate)

    def forget_device(self, device_id: str) -> None:
        self.devices.forget(device_id)

    # -- parsing --------------------------------------------------------------------------
    def _drop(self, reason: str) -> None:
        with self.stats.lock:
            self.stats.dropped[reason] += 1
        ops_metrics.INGEST_DROPPED.labels(reason).inc()

    def _record(self, tally: Tally) -> None:
        with self.stats.lock:
            self.stats.received.update(tally.received)
            self.stats.dropped.update(tally.dropped)
            self.stats.cpu_s["parse"] += tally.cpu_s
        for kind, n in tally.received.items():
            ops_metrics.INGEST_RECEIVED.labels(kind).inc(n)
        for reason, n in tally.dropped.items():
            ops_metrics.INGEST_DROPPED.labels(reason).inc(n)

    def parse(self, topic: str, raw: bytes) -> _Parsed | None:
        """Verify one message; None (counted) when it is dropped."""
        return self.parse_many([(topic, raw)])[0]

    def parse_many(self, messages: Sequence[tuple[str, bytes]]) -> list[_Parsed | None]:
        """Verify messages (None for each one dropped, counted by reason). The devices their
        topics name are looked up together first; then each message is decoded, verified and
        checked in one go, while its parsed objects are still in the CPU cache."""
        cpu0 = time.thread_time()
        tally = Tally()
        routes = [self._guard(tally, topic, self._route, tally, topic) for topic, _ in messages]
        infos = self.devices.lookup(r[1] for r in routes if r is not None)
        items = [(r, topic, raw) for r, (topic, raw) in zip(routes, messages, strict=True)]
        # Signature checks release the GIL: a batch with many of them is split across threads
        # (under sampling most windows are not checked, and threads would only contend for the GIL).
        n = max(1, min(self.settings.ingest.verify_threads, self.trust.expected_checks(routes) // MIN_PER_THREAD))
        step = max(1, -(-len(items) // n))
        chunks = [items[i:i + step] for i in range(step, len(items), step)]
        futures = [_verify_pool(n - 1).submit(self._verify_chunk, c, infos) for c in chunks]
        results = [self._verify_chunk(items[:step], infos)] + [f.result() for f in futures]
        out: list[_Parsed | None] = []
        for parsed, t in results:
            out.extend(parsed)
            tally.dropped.update(t.dropped)
        tally.cpu_s = time.thread_time() - cpu0 + sum(t.cpu_s for _, t in results[1:])
        self._record(tally)
        return out

    def _verify_chunk(self, items: list[tuple[Any, str, bytes]], infos: dict[str, DeviceInfo]
                      ) -> tuple[list[_Parsed | None], Tally]:
        cpu0, tally = time.thread_time(), Tally()
        out = [None if r is None else self._guard(tally, topic, self._verify, r, raw, infos) for r, topic, raw in items]
        tally.cpu_s = time.thread_time() - cpu0
        return out, tally

    def _guard(self, tally: Tally, topic: str, fn: Any, *args: Any) -> Any:
        """fn(*args), or None with the drop counted: a message must never take ingest down."""
        try:
            return fn(*args)
        except ProtocolError as exc:
            tally.dropped[exc.reason] += 1
        except ValueError:
            tally.dropped["malformed"] += 1
        except Exception:  # noqa: BLE001
            log.exception("unexpected error parsing a message on %s", topic)
            tally.dropped["malformed"] += 1
        return None

    def _route(self, tally: Tally, topic: str) -> tuple[str, str]:
        """(kind, device) of a message on one of our topics."""
        fleet, device, kind = parse_topic(topic)
        if kind not in KINDS:
            raise ProtocolError("malformed", f"unknown kind {kind!r}")
        tally.received[kind] += 1
        if fleet != self.settings.fleet_id:
            raise ProtocolError("wrong-fleet", f"fleet {fleet!r}")
        return kind, device

    def _verify(self, route: tuple[str, str], raw: bytes, infos: dict[str, DeviceInfo]) -> _Parsed:
        kind, device = route
        info = infos[device]
        check = self.trust.must_verify(kind)
        opened = None
        if info.keyring is not None and not info.broken and not (info.quarantined and kind != "state"):
            # what agents send: parsed once, from the signed bytes (a window checked as it is decoded)
            opened = open_signed(raw, info.keyring, check, decode_telemetry if kind == "telemetry" else decode_plain)
        if opened is not None:
            payload, view = opened
        else:
            payload = self._verify_envelope(kind, device, raw, info, check)
            if payload is None:
                return _Parsed(kind, device, None, info)  # the Last Will
            view = check_telemetry(payload) if kind == "telemetry" else None
        if payload.get("device") != device:
            raise ProtocolError("device-mismatch", f"payload names {payload.get('device')!r}")
        if kind == "telemetry":
            return _Parsed(kind, device, payload, info, view)
        seq = payload.get("seq")
        schema = STATE_SCHEMA if kind == "state" else EVENT_SCHEMA
        if payload.get("schema") != schema or not isinstance(seq, int) or isinstance(seq, bool) \
                or not 0 <= seq <= MAX_INT:
            raise ProtocolError("malformed", f"{kind} lacks schema or seq")
        if kind == "events" and not isinstance(payload.get("kind"), str):
            raise ProtocolError("malformed", "event lacks kind")
        return _Parsed(kind, device, payload, info)

    def _verify_envelope(self, kind: str, device: str, raw: bytes, info: DeviceInfo, check: bool
                         ) -> dict[str, Any] | None:
        """Any other message: the whole document decoded, then the general checks (None: the
        unsigned Last Will)."""
        doc = fastjson.decode(raw)
        if info.broken:
            raise ProtocolError("malformed", f"device {device} has an unusable key")
        if info.keyring is None:
            raise ProtocolError("unknown-device", device)
        if kind == "state" and doc.get("status") == "offline" and "signature" not in doc:
            return None
        if info.quarantined and kind != "state":
            raise ProtocolError("quarantined", device)
        if not check:
            return trusted_payload(raw, doc, info.keyring)
        try:
            return fast_verify(raw, doc, info.keyring)
        except ProtocolError as exc:  # sampling trusted this device's other windows: stop that
            if self.trust.sampling and exc.reason == "bad-signature":
                quarantine(self.engine, device, f"{kind}: {exc}")
                info.quarantined = True
            raise

    # -- storing --------------------------------------------------------------------------
    def process(self, messages: Sequence[tuple[str, bytes]]) -> None:
        self.store(self.parse_many(messages))

    def store(self, verified: Sequence[_Parsed | None]) -> None:
        """Store what parse_many accepted (IngestService runs the two steps on two threads)."""
        parsed = [p for p in verified if p is not None]
        if not parsed:
            return
        cpu0, self._aggregate_cpu = time.thread_time(), 0.0
        try:
            self._store_retrying(parsed)
        except Exception:  # noqa: BLE001
            log.exception("batch of %d failed; storing one by one", len(parsed))
            for p in parsed:
                try:
                    self._store([p])
                except Exception:  # noqa: BLE001
                    log.exception("dropping a %s message of %s that cannot be stored", p.kind, p.device)
                    self._drop("store-error")
        with self.stats.lock:
            self.stats.batches += 1
            self.stats.cpu_s["aggregate"] += self._aggregate_cpu
            self.stats.cpu_s["store"] += time.thread_time() - cpu0 - self._aggregate_cpu
        if time.monotonic() - self._last_prune > 600:
            self._last_prune = time.monotonic()
            self.prune()

    def _store_retrying(self, parsed: list[_Parsed], attempts: int = 6) -> None:
        """Ride out a database restart: retry with backoff while the queue applies back-pressure
        (a message that the database itself refuses goes to the one-by-one path instead)."""
        from sqlalchemy.exc import InterfaceError, OperationalError

        delay = 0.25
        for attempt in range(attempts):
            try:
                self._store(parsed)
                return
            except (OperationalError, InterfaceError) as exc:
                if attempt == attempts - 1:
                    raise
                log.warning("database unavailable (%s); retrying in %.1f s", type(exc).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _store(self, parsed: list[_Parsed]) -> None:
        tel = [p for p in parsed if p.kind == "telemetry"]
        states = [p for p in parsed if p.kind == "state"]
        events = [p for p in parsed if p.kind == "events"]
        ts = now()
        with Session(self.engine) as db:
            stored_tel, dup_tel = self._store_telemetry(db, tel, ts) if tel else (0, 0)
            stored_ev, dup_ev = store_events(db, self.engine, events, ts) if events else (0, 0)
            store_states(db, states, ts)
            self._touch_devices(db, parsed, ts)
            db.commit()
        with self.stats.lock:
            self.stats.stored["telemetry"] += stored_tel
            self.stats.duplicates["telemetry"] += dup_tel
            self.stats.stored["events"] += stored_ev
            self.stats.duplicates["events"] += dup_ev
            self.stats.stored["state"] += len(states)
        ops_metrics.INGEST_STORED.labels("telemetry").inc(stored_tel)
        ops_metrics.INGEST_DUPLICATES.labels("telemetry").inc(dup_tel)
        ops_metrics.INGEST_STORED.labels("events").inc(stored_ev)
        ops_metrics.INGEST_DUPLICATES.labels("events").inc(dup_ev)

    def _store_telemetry(self, db: Session, tel: list[_Parsed], ts: float) -> tuple[int, int]:
        rows: dict[tuple[str, int], Row] = {}  # one tuple per window, in window_insert.COLUMNS order
        hists: dict[tuple[str, int], Hist | None] = {}
        for p in tel:
            pl, info = p.payload, p.info
            assert pl is not None
            key = (p.device, pl["seq"])
            if key in rows:
                continue
            window, model = pl["window"], pl["model"]
            rows[key] = (p.device, key[1], float(window["start"]), float(window["end"]), model["name"],
                         model["version"], model["role"],
                         str(pl.get("device_class") or (info.device_class if info else "")),
                         info.cohort if info else "all", pl["requests"], sum(map(int, pl["errors"].values())), pl, ts)
            hists[key] = p.hist
        # a fixed row order: two processes inserting overlapping redeliveries never deadlock
        order = sorted(rows)
        inserted = self._insert_windows(db, [rows[k] for k in order])
        dups = len(tel) - len(inserted)
        if not inserted:
            return 0, dups
        stored = [k for k in order if k in inserted]
        waves = self._rollouts.record(db.connection(), [rows[k] for k in stored])  # wave tags, device runs
        groups: dict[tuple[Any, ...], list[tuple[str, int]]] = defaultdict(list)
        seconds: dict[tuple[Any, ...], float] = {}
        for key, wave in zip(stored, waves, strict=True):
            r = rows[key]
            secs, bucket = aggregate_bucket(r[START], r[END])
            akey = (*r[AGGREGATE_KEY], bucket, wave)
            groups[akey].append(key)
            seconds[akey] = secs
        cpu0, partial = time.thread_time(), {}
        for akey, keys in groups.items():
            hs = [hists[k] for k in keys]
            partial[akey] = aggregate.merge_many([rows[k][PAYLOAD] for k in keys],
                                                 None if None in hs else hs)  # type: ignore[arg-type]
        self._aggregates.merge(db.connection(), partial, seconds, ts)
        self._aggregate_cpu += time.thread_time() - cpu0
        return len(inserted), dups

    def _insert_windows(self, db: Session, rows: list[Row]) -> set[tuple[str, int]]:
        """Insert, skipping (device, seq) already stored; returns the keys really inserted."""
        return self._windows.insert(db, rows)

    def _touch_devices(self, db: Session, parsed: list[_Parsed], ts: float) -> None:
        """last_seen for devices heard from (written at most every few seconds per device)."""
        todo = []
        for device_id in dict.fromkeys([p.device for p in parsed if p.payload is not None and p.kind != "state"]):
            info = self.devices.get(device_id)
            if info is None or ts - info.seen_written >= 5.0:
                todo.append(device_id)
                if info is not None:
                    info.seen_written = ts
        if not todo:
            return
        db.flush()  # one statement for the whole batch, after the states' changes
        if self._windows.postgres:  # one JSON list (SQLAlchemy: an IN item per device; psycopg: arrays in Python)
            with db.connection().connection.driver_connection.cursor() as cur:  # type: ignore[union-attr]
                cur.execute(_TOUCH, (ts, dumps(sorted(todo)).decode()))
            return
        db.connection().execute(update(_DEVICE).where(_DEVICE.c.id.in_(sorted(todo))).values(last_seen=ts, online=True))

    def prune(self) -> int:
        """Delete per-device windows older than the retention period (aggregates stay)."""
        cutoff = now() - self.settings.ingest.retention_days * 86400
        with Session(self.engine) as db:
            n = db.execute(delete(TelemetryWindow).where(TelemetryWindow.received_at < cutoff)).rowcount
            db.commit()
        return int(n or 0)


_TOUCH = ("UPDATE device SET last_seen = %s, online = true "
          "WHERE id = ANY(ARRAY(SELECT json_array_elements_text(%s::json)))")


def aggregate_bucket(start: float, end: float) -> tuple[float, float]:
    """(seconds, bucket start) of a window's aggregate: agents start their windows when they
    start, not on the clock, so windows are merged per wall-clock slot of their length (a 60 s
    window from 12:00:37 goes to 12:00:00); keyed by the exact start, every device's window
    would be an aggregate row of its own (as big as the raw table, too small for drift)."""
    secs = float(round(end - start))
    return (secs, float(start // secs * secs)) if secs >= 1 else (end - start, start)

