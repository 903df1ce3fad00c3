"""Ingest storage: verify messages (fleet.verification) and write them in batches.

Idempotent on (device, seq): the window rows and the aggregate update commit in the same
transaction, and aggregates only grow by the rows really inserted. No MQTT here: the service in
fleet.ingest feeds it, and tests and benchmarks call it directly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from agent.keys import Keyring, public_key_from_b64
from agent.protocol import EVENT_SCHEMA, STATE_SCHEMA, ProtocolError, decode, parse_topic
from fleet import aggregate, audit, ops_metrics
from fleet.models import Aggregate, Device, DeviceEvent, TelemetryWindow, now
from fleet.settings import FleetSettings
from fleet.verification import MAX_INT, check_telemetry, fast_verify

log = logging.getLogger(__name__)
KINDS = ("telemetry", "state", "events")


@dataclass
class IngestStats:
    received: Counter[str] = field(default_factory=Counter)
    stored: Counter[str] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"received": dict(self.received), "stored": dict(self.stored),
                    "duplicates": dict(self.duplicates), "dropped": dict(self.dropped), "batches": self.batches}


@dataclass
class _DeviceInfo:
    keyring: Keyring | None  # None: unknown or decommissioned
    device_class: str
    cohort: str
    fetched: float
    seen_written: float = 0.0


@dataclass
class _Parsed:
    kind: str
    device: str
    payload: dict[str, Any] | None  # None for the unsigned Last Will {"status": "offline"}


def _insert_ignore(engine: Engine, model: Any) -> Any:
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(model)


class Processor:
    """Verification and batched storage; no MQTT here (tests and benchmarks call it directly)."""

    def __init__(self, settings: FleetSettings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.stats = IngestStats()
        self._devices: dict[str, _DeviceInfo] = {}
        self._dev_lock = threading.Lock()
        self._last_prune = 0.0

    # -- device cache ---------------------------------------------------------------------
    def forget_device(self, device_id: str) -> None:
        with self._dev_lock:
            self._devices.pop(device_id, None)

    def _device(self, device_id: str) -> _DeviceInfo:
        t = time.monotonic()
        with self._dev_lock:
            info = self._devices.get(device_id)
        if info is not None and t - info.fetched < self.settings.ingest.device_cache_s:
            return info
        with Session(self.engine) as db:
            d = db.get(Device, device_id)
            if d is None or d.status != "active" or not d.public_key:
                info = _DeviceInfo(None, "", "", t)
            else:
                info = _DeviceInfo(Keyring.from_public_keys([public_key_from_b64(d.public_key)]), d.device_class,
                                   aggregate.cohort_of(d.attributes, self.settings.cohort_keys), t,
                                   info.seen_written if info else 0.0)
        with self._dev_lock:
            self._devices[device_id] = info
        return info

    # -- parsing --------------------------------------------------------------------------
    def _drop(self, reason: str) -> None:
        with self.stats.lock:
            self.stats.dropped[reason] += 1
        ops_metrics.INGEST_DROPPED.labels(reason).inc()

    def parse(self, topic: str, raw: bytes) -> _Parsed | None:
        """Verify one message; None (counted) when it is dropped."""
        try:
            fleet, device, kind = parse_topic(topic)
            if kind not in KINDS:
                raise ProtocolError("malformed", f"unknown kind {kind!r}")
            with self.stats.lock:
                self.stats.received[kind] += 1
            ops_metrics.INGEST_RECEIVED.labels(kind).inc()
            if fleet != self.settings.fleet_id:
                raise ProtocolError("wrong-fleet", f"fleet {fleet!r}")
            doc = decode(raw)
            if kind == "state" and doc.get("status") == "offline" and "signature" not in doc:
                info = self._device(device)
                if info.keyring is None:
                    raise ProtocolError("unknown-device", device)
                return _Parsed(kind, device, None)
            info = self._device(device)
            if info.keyring is None:
                raise ProtocolError("unknown-device", device)
            payload = fast_verify(raw, doc, info.keyring)
            if payload.get("device") != device:
                raise ProtocolError("device-mismatch", f"payload names {payload.get('device')!r}")
            if kind == "telemetry":
                check_telemetry(payload)
            else:
                seq = payload.get("seq")
                schema = STATE_SCHEMA if kind == "state" else EVENT_SCHEMA
                if payload.get("schema") != schema or not isinstance(seq, int) or isinstance(seq, bool) \
                        or not 0 <= seq <= MAX_INT:
                    raise ProtocolError("malformed", f"{kind} lacks schema or seq")
                if kind == "events" and not isinstance(payload.get("kind"), str):
                    raise ProtocolError("malformed", "event lacks kind")
            return _Parsed(kind, device, payload)
        except ProtocolError as exc:
            self._drop(exc.reason)
        except ValueError:
            self._drop("malformed")
        except Exception:  # noqa: BLE001 - a message must never take ingest down
            log.exception("unexpected error parsing a message on %s", topic)
            self._drop("malformed")
        return None

    # -- storing --------------------------------------------------------------------------
    def process(self, messages: Sequence[tuple[str, bytes]]) -> None:
        parsed = [p for p in (self.parse(t, r) for t, r in messages) if p is not None]
        if not parsed:
            return
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
            stored_ev, dup_ev = self._store_events(db, events, ts) if events else (0, 0)
            self._store_states(db, states, ts)
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
        rows: dict[tuple[str, int], dict[str, Any]] = {}
        for p in tel:
            pl = p.payload
            assert pl is not None
            info = self._devices.get(p.device)
            key = (p.device, pl["seq"])
            if key in rows:
                continue
            errors = sum(int(v) for v in pl["errors"].values())
            rows[key] = {"device_id": p.device, "seq": pl["seq"], "window_start": float(pl["window"]["start"]),
                         "window_end": float(pl["window"]["end"]), "model_name": pl["model"]["name"],
                         "model_version": pl["model"]["version"], "role": pl["model"]["role"],
                         "device_class": str(pl.get("device_class") or (info.device_class if info else "")),
                         "cohort": info.cohort if info else "all", "requests": pl["requests"], "errors": errors,
                         "payload": pl, "received_at": ts}
        # a fixed row order: two processes inserting overlapping redeliveries never deadlock
        inserted = self._insert_windows(db, [rows[k] for k in sorted(rows)])
        dups = len(tel) - len(inserted)
        if not inserted:
            return 0, dups
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
        seconds: dict[tuple[Any, ...], float] = {}
        for key in inserted:
            r = rows[key]
            akey = (r["model_name"], r["model_version"], r["role"], r["device_class"], r["cohort"], r["window_start"])
            groups[akey].append(r["payload"])
            seconds[akey] = r["window_end"] - r["window_start"]
        partial = {k: aggregate.merge_many(v) for k, v in groups.items()}
        self._merge_aggregates(db, partial, seconds, ts)
        return len(inserted), dups

    _PG_COLS = (("device_id", "text"), ("seq", "bigint"), ("window_start", "float8"), ("window_end", "float8"),
                ("model_name", "text"), ("model_version", "int"), ("role", "text"), ("device_class", "text"),
                ("cohort", "text"), ("requests", "bigint"), ("errors", "bigint"), ("payload", "json"),
                ("received_at", "float8"))

    def _insert_windows(self, db: Session, rows: list[dict[str, Any]]) -> set[tuple[str, int]]:
        """Insert, skipping (device, seq) already stored; returns the keys really inserted."""
        if self.engine.dialect.name == "postgresql":
            # One short statement over one JSON document: planned once, no per-row parameters,
            # and the payloads go in as the exact text the devices signed.
            from sqlalchemy import text

            from fleet.db import json_dumps

            cols = ", ".join(c for c, _ in self._PG_COLS)
            record = ", ".join(f"{c} {t}" for c, t in self._PG_COLS)
            sql = text(f"INSERT INTO telemetrywindow ({cols}) SELECT {cols} FROM "
                       f"json_to_recordset(CAST(:batch AS json)) AS x({record}) "
                       "ON CONFLICT (device_id, seq) DO NOTHING RETURNING device_id, seq")
            parts = []
            for r in rows:
                head = json_dumps({k: v for k, v in r.items() if k != "payload"})
                parts.append(f'{head[:-1]},"payload":{json_dumps(r["payload"])}}}')
            return {(r[0], r[1]) for r in db.execute(sql, {"batch": "[" + ",".join(parts) + "]"}).all()}
        stmt = _insert_ignore(self.engine, TelemetryWindow).on_conflict_do_nothing(
            index_elements=["device_id", "seq"]).returning(TelemetryWindow.device_id, TelemetryWindow.seq)
        return {(r[0], r[1]) for r in db.execute(stmt, rows).all()}

    def _merge_aggregates(self, db: Session, partial: dict[tuple[Any, ...], dict[str, Any]],
                          seconds: dict[tuple[Any, ...], float], ts: float) -> None:
        keys = sorted(partial)  # a fixed lock order: two ingest processes never deadlock
        cols = ("model_name", "model_version", "role", "device_class", "cohort", "window_start")
        ins = _insert_ignore(self.engine, Aggregate).on_conflict_do_nothing(index_elements=list(cols))
        db.execute(ins, [{**dict(zip(cols, k, strict=True)), "window_seconds": seconds[k], "n_windows": 0,
                          "requests": 0, "errors": 0, "payload": aggregate.empty(), "updated_at": ts} for k in keys])
        for k in keys:
            cond = [getattr(Aggregate, c) == v for c, v in zip(cols, k, strict=True)]
            row = db.execute(select(Aggregate.id, Aggregate.payload).where(*cond).with_for_update()).one()
            merged = aggregate.merge_into(dict(row.payload or aggregate.empty()), partial[k])
            errors = sum(int(v) for v in merged["errors"].values())
            db.execute(update(Aggregate).where(Aggregate.id == row.id).values(
                payload=merged, n_windows=merged["n_windows"], requests=merged["requests"], errors=errors,
                updated_at=ts))

    def _store_events(self, db: Session, events: list[_Parsed], ts: float) -> tuple[int, int]:
        rows = {}
        for p in events:
            pl = p.payload
            assert pl is not None
            rows.setdefault((p.device, pl["seq"]), {
                "device_id": p.device, "seq": pl["seq"], "time": float(pl.get("time") or ts), "kind": pl["kind"],
                "command_id": pl.get("command_id"), "reason": pl.get("reason"),
                "details": pl.get("details") if isinstance(pl.get("details"), dict) else {}, "received_at": ts})
        stmt = _insert_ignore(self.engine, DeviceEvent).on_conflict_do_nothing(
            index_elements=["device_id", "seq"]).returning(DeviceEvent.device_id, DeviceEvent.seq)
        inserted = {(r[0], r[1]) for r in db.execute(stmt, list(rows.values())).all()}
        for key in sorted(inserted):
            r = rows[key]
            audit.record(db, f"device:{r['device_id']}", f"event.{r['kind']}", f"device:{r['device_id']}", None,
                         {"seq": r["seq"], "command_id": r["command_id"], "reason": r["reason"],
                          "details": r["details"]})
        return len(inserted), len(events) - len(inserted)

    def _store_states(self, db: Session, states: list[_Parsed], ts: float) -> None:
        latest: dict[str, _Parsed] = {}
        for p in states:
            cur = latest.get(p.device)
            if p.payload is None:
                if cur is None:
                    latest[p.device] = p
                continue
            if cur is None or cur.payload is None or p.payload["seq"] > cur.payload["seq"]:
                latest[p.device] = p
        for device_id, p in sorted(latest.items()):
            d = db.get(Device, device_id, with_for_update=True)
            if d is None:
                continue
            if p.payload is None:
                d.online = False
                db.add(d)
                continue
            pl = p.payload
            if pl["seq"] <= d.state_seq:
                continue  # an older state (redelivery, retained copy) never overwrites a newer one
            inst = pl.get("installed") if isinstance(pl.get("installed"), dict) else None
            prev = pl.get("previous") if isinstance(pl.get("previous"), dict) else None
            before = {"installed_name": d.installed_name, "installed_version": d.installed_version,
                      "installed_manifest_sha256": d.installed_manifest_sha256}
            d.installed_name = inst.get("name") if inst else None
            d.installed_version = inst.get("version") if inst else None
            d.installed_manifest_sha256 = inst.get("manifest_sha256") if inst else None
            d.installed_bundle_sha256 = inst.get("bundle_sha256") if inst else None
            d.previous_version = prev.get("version") if prev else None
            d.agent_version = pl.get("agent_version")
            d.state, d.state_seq = pl, pl["seq"]
            d.online = pl.get("status", "online") == "online"
            d.last_seen = max(d.last_seen or 0.0, ts)
            d.last_seq = max(d.last_seq, pl["seq"])
            if not d.device_class and isinstance(pl.get("device_class"), str):
                d.device_class = pl["device_class"]
            db.add(d)
            after = {"installed_name": d.installed_name, "installed_version": d.installed_version,
                     "installed_manifest_sha256": d.installed_manifest_sha256}
            if after != before:
                audit.record(db, f"device:{device_id}", "device.installed", f"device:{device_id}", before, after)

    def _touch_devices(self, db: Session, parsed: list[_Parsed], ts: float) -> None:
        """last_seen for devices heard from (written at most every few seconds per device)."""
        seen: dict[str, int] = {}
        for p in parsed:
            if p.payload is not None and p.kind != "state":
                seen[p.device] = max(seen.get(p.device, 0), int(p.payload["seq"]))
        todo = []
        for device_id in seen:
            info = self._devices.get(device_id)
            if info is None or ts - info.seen_written >= 5.0:
                todo.append(device_id)
                if info is not None:
                    info.seen_written = ts
        if todo:  # one statement for the whole batch
            db.execute(update(Device).where(Device.id.in_(sorted(todo))).values(last_seen=ts, online=True))

    def prune(self) -> int:
        """Delete per-device windows older than the retention period (aggregates stay)."""
        cutoff = now() - self.settings.ingest.retention_days * 86400
        with Session(self.engine) as db:
            n = db.execute(delete(TelemetryWindow).where(TelemetryWindow.received_at < cutoff)).rowcount
            db.commit()
        return int(n or 0)
