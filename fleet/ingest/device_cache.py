"""Ingest's cache of device keys and labels, refreshed a whole batch at a time.

Each entry lives `device_cache_s` (how long a decommission may take to reach ingest, unless the
app calls forget()); the devices of a batch that are missing or stale are read in one query
instead of one query per device, and their keys are kept as loaded Ed25519 keys.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.engine import Engine

from agent.keys import Keyring, public_key_from_b64
from fleet.ingest import aggregate, fastjson
from fleet.models import Device
from fleet.settings import FleetSettings

log = logging.getLogger(__name__)
CHUNK = 500  # ids per IN (...) query, well under SQLite's parameter limit
_COLS = (Device.id, Device.status, Device.public_key, Device.device_class, Device.attributes, Device.quarantined_at)
_PG_ROWS = ("SELECT id, status, public_key, device_class, attributes::text, quarantined_at FROM device "
            "WHERE id = ANY(%s)")


class _Row(NamedTuple):
    id: str
    status: str
    public_key: str
    device_class: str
    attributes: Any
    quarantined_at: float | None


@dataclass(slots=True)
class DeviceInfo:
    keyring: Keyring | None  # None: unknown or decommissioned (or, with broken, an unusable key)
    device_class: str
    cohort: str
    fetched: float
    seen_written: float = 0.0
    broken: bool = False  # the stored public key cannot be loaded: never cached, logged
    quarantined: bool = False  # a sampled signature check failed: telemetry refused (fleet.ingest.trust)
    public_key: str = ""  # as stored: a refresh that finds the same key keeps the loaded keyring


class DeviceCache:
    def __init__(self, settings: FleetSettings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self._devices: dict[str, DeviceInfo] = {}
        self._lock = threading.Lock()

    def forget(self, device_id: str) -> None:
        with self._lock:
            self._devices.pop(device_id, None)

    def get(self, device_id: str) -> DeviceInfo | None:
        """The cached entry, fresh or not (no database access)."""
        return self._devices.get(device_id)

    def lookup(self, device_ids: Iterable[str]) -> dict[str, DeviceInfo]:
        """Entries for all `device_ids`, reading the missing and stale ones in one go."""
        t = time.monotonic()
        ttl = self.settings.ingest.device_cache_s
        with self._lock:
            found = {d: self._devices.get(d) for d in set(device_ids)}
        stale = sorted(d for d, info in found.items() if info is None or t - info.fetched >= ttl)
        out = {d: info for d, info in found.items() if info is not None}
        if stale:
            loaded = self._load(stale, found, t)
            with self._lock:
                self._devices.update({d: info for d, info in loaded.items() if not info.broken})
            out.update(loaded)
        return out

    def _rows(self, ids: list[str]) -> dict[str, Any]:
        """The devices' rows. PostgreSQL: one statement with an array parameter, the attributes
        read as text by fastjson (SQLAlchemy compiles an IN list per call, a bind per id, and reads
        JSON with the stdlib: with the default device_cache_s every window refreshes its device)."""
        rows: dict[str, Any] = {}
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "postgresql":
                with conn.connection.driver_connection.cursor() as cur:  # type: ignore[union-attr]
                    cur.execute(_PG_ROWS, (ids,))
                    for r in cur:
                        rows[r[0]] = _Row(r[0], r[1], r[2], r[3], fastjson.loads(r[4]) if r[4] is not None else None, r[5])
                return rows
            for i in range(0, len(ids), CHUNK):
                rows.update({r[0]: r for r in conn.execute(select(*_COLS).where(Device.id.in_(ids[i:i + CHUNK])))})
        return rows

    def _load(self, ids: list[str], old: dict[str, DeviceInfo | None], t: float) -> dict[str, DeviceInfo]:
        rows = self._rows(ids)
        out = {}
        for device_id in ids:
            r = rows.get(device_id)
            prev = old.get(device_id)
            seen = prev.seen_written if prev else 0.0
            if r is None or r.status != "active" or not r.public_key:
                out[device_id] = DeviceInfo(None, "", "", t, seen)
                continue
            if prev is not None and prev.keyring is not None and prev.public_key == r.public_key:
                keyring = prev.keyring  # loading an Ed25519 key costs more than reading its row
            else:
                try:
                    keyring = Keyring.from_public_keys([public_key_from_b64(r.public_key)])
                except Exception:  # noqa: BLE001 - one bad row must not stop the others' messages
                    log.exception("device %s has an unusable public key", device_id)
                    out[device_id] = DeviceInfo(None, "", "", t, seen, broken=True)
                    continue
            out[device_id] = DeviceInfo(keyring, r.device_class, aggregate.cohort_of(r.attributes,
                                                                                     self.settings.cohort_keys),
                                        t, seen, quarantined=r.quarantined_at is not None, public_key=r.public_key)
        return out
