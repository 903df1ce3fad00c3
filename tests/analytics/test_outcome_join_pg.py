"""The backend outcome join on PostgreSQL (COPY path) and SQLite (upsert path) alike: labels
replace earlier ones, match records by request id, and labels that came first join later."""

from __future__ import annotations

import os
import socket

import pytest
from sqlmodel import Session

from fleet.analytics.join import _upsert, joined_quality, post_labels
from fleet.db import init_db, make_engine
from fleet.models import PredictionRecord


def _pg() -> str | None:
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
    except OSError:
        return None
    import psycopg

    name = f"t13_join_{os.getpid()}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_labels_join_by_request_id(backend: str, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'f.db'}" if backend == "sqlite" else _pg()
    if url is None:
        pytest.skip("PostgreSQL is not running")
    engine = make_engine(url)
    init_db(engine)
    rec = {"window_id": 1, "device_id": "d", "model_name": "m", "model_version": 1, "device_class": "",
           "cohort": "", "confidence": 0.9, "slice": "_all", "at": 1.0}
    with Session(engine) as db:
        _upsert(db, PredictionRecord, [{**rec, "request_id": f"r{i}", "predicted": float(i % 3)} for i in range(10)],
                ["request_id"], ["window_id"])
        db.commit()
        assert post_labels(db, [(f"r{i}", 0.0) for i in range(10)] + [("later", 1.0)]) == {"accepted": 11,
                                                                                             "matched": 10}
        assert post_labels(db, [(f"r{i}", float(i % 3)) for i in range(5)]) == {"accepted": 5, "matched": 5}
        q = joined_quality(db, "m", 1, n_classes=3)
        # r0..r4 relabelled to their prediction (right); r5..r9 keep label 0: right for r6 and r9
        assert (q.labelled, q.correct) == (10, 7)
        _upsert(db, PredictionRecord, [{**rec, "request_id": "later", "predicted": 1.0}], ["request_id"],
                ["window_id"])
        db.commit()
        assert joined_quality(db, "m", 1, n_classes=3).labelled == 11   # the early label joins now
    engine.dispose()
    if backend == "postgres":
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
