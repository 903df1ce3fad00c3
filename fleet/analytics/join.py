"""The backend outcome path: sampled prediction records (from telemetry) joined with labels that a
downstream system posts in bulk by request id (POST /api/outcomes).

Records are copied out of stored telemetry windows lazily (`sync_records`: windows with an id
above the newest one already copied), so ingest stays as it is; labels are upserted (the last
label of an id wins) and may arrive before or after their record: the join happens at query time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import func
from sqlmodel import Session, select

from fleet.analytics.quality import OnlineQuality
from fleet.models import OutcomeLabel, PredictionRecord, TelemetryWindow

SYNC_BATCH = 2000


def sync_records(session: Session, batch: int = SYNC_BATCH) -> int:
    """Copy prediction records of windows stored since the last sync; returns rows added."""
    last = session.exec(select(func.max(PredictionRecord.window_id))).one() or 0
    added = 0
    while True:
        windows = session.exec(select(TelemetryWindow).where(TelemetryWindow.id > last)
                               .order_by(TelemetryWindow.id).limit(batch)).all()  # type: ignore[arg-type]
        if not windows:
            return added
        rows: dict[str, dict[str, Any]] = {}
        for w in windows:
            last = max(last, int(w.id or 0))
            for rec in (w.payload or {}).get("prediction_records") or ():
                row = _record_row(w, rec)
                if row is not None:
                    rows[row["request_id"]] = row
        if rows:
            _upsert(session, PredictionRecord, list(rows.values()), ["request_id"], ["window_id"])
            added += len(rows)
        session.commit()
        if len(windows) < batch:
            return added


def _record_row(w: TelemetryWindow, rec: Any) -> dict[str, Any] | None:
    if not isinstance(rec, Mapping) or not isinstance(rec.get("id"), str) or not 0 < len(rec["id"]) <= 80:
        return None
    try:
        predicted = float(rec["prediction"])
    except (KeyError, TypeError, ValueError):
        return None
    conf = rec.get("confidence")
    return {"request_id": rec["id"], "window_id": int(w.id or 0), "device_id": w.device_id,
            "model_name": w.model_name, "model_version": int(w.model_version), "device_class": w.device_class,
            "cohort": w.cohort, "predicted": predicted,
            "confidence": float(conf) if isinstance(conf, (int, float)) else None,
            "slice": str(rec.get("slice") or "_all")[:200], "at": float(w.window_end)}


def _upsert(session: Session, table: Any, rows: list[dict[str, Any]], keys: list[str], update: list[str]) -> None:
    """INSERT .. ON CONFLICT DO UPDATE on PostgreSQL and SQLite alike."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(table.__table__)
    stmt = stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in update})
    for i in range(0, len(rows), 20000):   # executemany: SQLAlchemy batches it as multi-row VALUES
        session.execute(stmt, rows[i:i + 20000])


def add_wave_labels(session: Session, candidate: OnlineQuality | None, control: OnlineQuality | None, *,
                    model: str, version: int, wave_devices: Sequence[str], control_devices: Sequence[str],
                    since: float) -> None:
    """Labels joined at the backend into a rollout wave's evidence (fleet.rollouts.evidence):
    the candidate's on the wave devices, the control's on the other devices' other versions."""
    if candidate is None or not session.exec(select(OutcomeLabel.request_id).limit(1)).first():
        return   # no backend labels at all: nothing to join (the common case costs one query)
    sync_records(session)
    joined_quality(session, model, version, devices=wave_devices, since=since, q=candidate)
    if control is not None and control_devices:
        joined_quality(session, model, None, exclude_version=version, devices=control_devices, since=since,
                       q=control)


def post_labels(session: Session, items: Iterable[tuple[str, float]]) -> dict[str, int]:
    """Upsert labels by request id; says how many match a prediction record already known."""
    now = time.time()
    rows = {rid: {"request_id": rid, "label": float(label), "received_at": now} for rid, label in items}
    if not rows:
        return {"accepted": 0, "matched": 0}
    sync_records(session)
    if session.get_bind().dialect.name == "postgresql":
        return _post_labels_copy(session, rows)
    _upsert(session, OutcomeLabel, list(rows.values()), ["request_id"], ["label", "received_at"])
    ids = list(rows)
    matched = 0
    for i in range(0, len(ids), 5000):
        matched += session.exec(select(func.count()).select_from(PredictionRecord)
                                .where(PredictionRecord.request_id.in_(ids[i:i + 5000]))).one()  # type: ignore[attr-defined]
    session.commit()
    return {"accepted": len(rows), "matched": int(matched)}


def _post_labels_copy(session: Session, rows: dict[str, dict[str, Any]]) -> dict[str, int]:
    """PostgreSQL: COPY into a temporary table, one upsert and one join count (1M labels in seconds)."""
    from sqlalchemy import text

    session.execute(text("CREATE TEMP TABLE IF NOT EXISTS outcome_in (request_id varchar(80), label float8, "
                         "received_at float8) ON COMMIT DELETE ROWS"))
    cur = session.connection().connection.cursor()
    with cur.copy("COPY outcome_in (request_id, label, received_at) FROM STDIN") as cp:
        for r in rows.values():
            cp.write_row((r["request_id"], r["label"], r["received_at"]))
    session.execute(text("INSERT INTO outcomelabel (request_id, label, received_at) SELECT request_id, label, "
                         "received_at FROM outcome_in ON CONFLICT (request_id) DO UPDATE SET label = EXCLUDED.label,"
                         " received_at = EXCLUDED.received_at"))
    matched = session.execute(text("SELECT count(*) FROM outcome_in JOIN predictionrecord USING (request_id)")).one()[0]
    session.commit()
    return {"accepted": len(rows), "matched": int(matched)}


def joined_quality(session: Session, model: str, version: int | None, *, n_classes: int | None = None,
                   cohort: str | None = None, device_class: str | None = None,
                   devices: Sequence[str] | None = None, since: float | None = None,
                   exclude_version: int | None = None, q: OnlineQuality | None = None) -> OnlineQuality:
    """Labelled records of one model version (or every version but `exclude_version`, on
    `devices`, from `since`) as an OnlineQuality, merged into `q` when given."""
    q = q or OnlineQuality()
    stmt = (select(PredictionRecord.predicted, OutcomeLabel.label, PredictionRecord.slice,
                   PredictionRecord.confidence)
            .join(OutcomeLabel, OutcomeLabel.request_id == PredictionRecord.request_id)  # type: ignore[arg-type]
            .where(PredictionRecord.model_name == model))
    if version is not None:
        stmt = stmt.where(PredictionRecord.model_version == int(version))
    if exclude_version is not None:
        stmt = stmt.where(PredictionRecord.model_version != int(exclude_version))
    if devices is not None:
        stmt = stmt.where(PredictionRecord.device_id.in_(list(devices)[:5000]))  # type: ignore[attr-defined]
    if since is not None:
        stmt = stmt.where(PredictionRecord.at >= since)
    if cohort is not None:
        stmt = stmt.where(PredictionRecord.cohort == cohort)
    if device_class is not None:
        stmt = stmt.where(PredictionRecord.device_class == device_class)
    rows = session.exec(stmt).all()
    if not rows:
        return q
    pred = np.asarray([r[0] for r in rows], dtype=np.float64)
    label = np.asarray([r[1] for r in rows], dtype=np.float64)
    slices = np.asarray([r[2] for r in rows])
    classification = all(r[3] is not None for r in rows)
    if classification:
        k = int(n_classes or int(max(pred.max(), label.max())) + 1)
        for s in np.unique(slices):
            sel = slices == s
            q.add_pairs(str(s), label[sel].astype(np.int64), pred[sel].astype(np.int64), k)
    else:
        edges = q.error_edges or [-10.0, -5.0, -2.0, -1.0, -0.5, -0.1, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0]
        for s in np.unique(slices):
            err = pred[slices == s] - label[slices == s]
            counts = np.bincount(np.searchsorted(edges, err, side="right"), minlength=len(edges) + 1)
            q.add_outcomes({"kind": "value", "error_edges": edges, "slices": {str(s): {
                "n": int(err.size), "counts": counts.tolist(), "abs_error_sum": float(np.abs(err).sum()),
                "sq_error_sum": float((err * err).sum())}}})
    return q
