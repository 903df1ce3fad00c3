"""Issue 20, what was seen 3 and 4 (units): a stable ingest identity, so a restarted process
resumes its persistent session instead of orphaning it in the $share group; and the rules by
which the evaluator knows it is blind."""

from __future__ import annotations

from sqlmodel import Session

from fleet.ingest.health import CATCH_UP_S, IGNORE_AFTER_S, LAG_MAX_MESSAGES, STALE_AFTER_S, blindness
from fleet.ingest.service import ingest_client_id
from fleet.rollouts.models import (
    WAIT_INGEST_AWAY,
    WAIT_INGEST_CATCHING_UP,
    WAIT_INGEST_DISCONNECTED,
    WAIT_NO_INGEST,
    IngestHeartbeat,
)
from fleet.settings import FleetSettings, IngestSettings


def test_a_persistent_ingest_session_has_a_stable_client_id(monkeypatch):
    monkeypatch.delenv("EDGEFLEET_INGEST_NAME", raising=False)
    s = FleetSettings(fleet_id="prod", ingest=IngestSettings(session_expiry_s=600))
    a, b = ingest_client_id(s), ingest_client_id(s)
    assert a == b and a.startswith("edgefleet-ingest-prod-")         # the same after a restart
    assert ingest_client_id(s, "serve") != a                          # one per worker slot
    s.ingest.name = "ingest-2"
    assert ingest_client_id(s) == "edgefleet-ingest-ingest-2"
    monkeypatch.setenv("EDGEFLEET_INGEST_NAME", "ingest-3")
    assert ingest_client_id(s) == "edgefleet-ingest-ingest-3"
    monkeypatch.delenv("EDGEFLEET_INGEST_NAME")
    clean = FleetSettings(fleet_id="prod")                            # clean sessions die with the process
    assert ingest_client_id(clean) != ingest_client_id(clean)


def _row(engine, name: str, **kw) -> None:
    with Session(engine) as s:
        s.merge(IngestHeartbeat(name=name, **kw))
        s.commit()


def test_blindness_rules(engine):
    at = 1_000_000.0
    with Session(engine) as s:
        assert blindness(s, at) is None                               # nothing known: not blind
    _row(engine, "a", connected=True, connected_since=at - 60, updated_at=at - 0.5)
    with Session(engine) as s:
        assert blindness(s, at) is None
    _row(engine, "b", connected=False, updated_at=at - 0.5)
    with Session(engine) as s:
        b = blindness(s, at)
        assert b.kind == WAIT_INGEST_DISCONNECTED and b.message.startswith("waiting: ingest disconnected")
    _row(engine, "b", connected=True, connected_since=at - CATCH_UP_S / 2, updated_at=at - 0.5)
    with Session(engine) as s:
        assert blindness(s, at).kind == WAIT_INGEST_CATCHING_UP
    _row(engine, "b", connected=True, connected_since=at - 60, queue_depth=LAG_MAX_MESSAGES + 1, updated_at=at)
    with Session(engine) as s:
        assert blindness(s, at).kind == WAIT_INGEST_CATCHING_UP
    # b stopped (or crashed) with a persistent session: its share is queued for it
    _row(engine, "b", connected=False, session_expiry_s=600, stopped=True, updated_at=at - STALE_AFTER_S - 1)
    with Session(engine) as s:
        assert blindness(s, at).kind == WAIT_INGEST_AWAY
    _row(engine, "b", connected=False, session_expiry_s=0, updated_at=at - STALE_AFTER_S - 1)
    with Session(engine) as s:
        assert blindness(s, at) is None                               # a clean session: a takes it all
    _row(engine, "a", connected=True, connected_since=at - 60, updated_at=at - STALE_AFTER_S - 1)
    with Session(engine) as s:
        assert blindness(s, at).kind == WAIT_NO_INGEST
        assert blindness(s, at + IGNORE_AFTER_S + 10) is None         # long gone: forgotten
