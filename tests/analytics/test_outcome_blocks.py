"""The outcome store keeps the agent's own request ids (`<prefix>-<hex counter>`) as one packed
row per flush and model (agent/outcome_blocks.py): every id still answers with its own version,
prediction, confidence bucket and slice, once; across a reopen; pruned by horizon and cap; other
ids (batch rows `<id>/<j>`) keep their own rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.confidence import CONFIDENCE_EDGES, MonitorSpec, bucket, probabilities, top2
from agent.outcomes import OutcomeStore, UnknownRequest


class V1:
    version = 1
    monitor = MonitorSpec(n_classes=4, softmax=True)


class V2:
    version = 2
    monitor = MonitorSpec(task="regression")


def _fill(store: OutcomeStore, start: int, n: int, seed: int) -> dict[str, tuple]:
    """n requests alternating two models (ids interleave across blocks); what each must answer."""
    rng = np.random.default_rng(seed)
    want = {}
    for c in range(start, start + n):
        rid, sl = f"0a1b2c3d4e5f-{c:x}", f"region={'eu' if c % 3 else 'us'}"
        if c % 2:
            out = rng.normal(size=(1, 4)).astype(np.float32)
            store.record(rid, V1, out, sl)
            pred, conf, _ = top2(probabilities(out, True))
            want[rid] = (1, int(pred[0]), None, int(bucket(conf, CONFIDENCE_EDGES)[0]), sl)
        else:
            out = rng.normal(size=(1, 1)).astype(np.float32)
            store.record(rid, V2, out, sl)
            want[rid] = (2, None, float(out[0, 0]), None, sl)
    return want


def test_every_id_answers_once_and_survives_a_reopen(tmp_path: Path) -> None:
    s = OutcomeStore(tmp_path / "o.sqlite")
    want = _fill(s, 1, 300, seed=0)
    assert s.flush(now=1000.0) == 300
    assert s._db.execute("SELECT COUNT(*) FROM blocks").fetchone()[0] == 2   # one row per model and flush
    assert s._db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 0
    for rid in list(want)[:150]:
        assert s.take(rid, now=1000.0)[1:] == pytest.approx(want[rid]), rid
    with pytest.raises(UnknownRequest):
        s.take(list(want)[0], now=1000.0)          # a label counts once
    with pytest.raises(UnknownRequest):
        s.take("0a1b2c3d4e5f-fffff", now=1000.0)   # never made
    assert len(s) == 150
    s.close()
    again = OutcomeStore(tmp_path / "o.sqlite")
    assert len(again) == 150
    rid = list(want)[200]
    assert again.take(rid, now=1000.0)[1:] == pytest.approx(want[rid])
    again.close()


def test_horizon_cap_and_batch_rows(tmp_path: Path) -> None:
    s = OutcomeStore(tmp_path / "o.sqlite", horizon_s=100, max_records=50)
    old = _fill(s, 1, 30, seed=1)
    s.flush(now=1000.0)
    new = _fill(s, 31, 30, seed=2)
    s.flush(now=1050.0)
    assert len(s) == 45          # over the cap of 50: the oldest block (15 of the first flush) went whole
    with pytest.raises(UnknownRequest):
        s.take(list(old)[0], now=1050.0)
    assert all(s.take(r, now=1050.0) for r in list(new)[-5:])
    s.record("0a1b2c3d4e5f-ff", V1, np.ones((3, 4), dtype=np.float32), "_all")  # a batch: rows id/0..id/2
    s.flush(now=1120.0)                          # the first flushes are past the horizon
    with pytest.raises(UnknownRequest):
        s.take(list(old)[-1], now=1120.0)
    assert s.take("0a1b2c3d4e5f-ff/2", now=1120.0)[1] == 1
    assert s._db.execute("SELECT COUNT(*) FROM blocks").fetchone()[0] == 2   # the second flush's
    assert len(s) == 25 + 2
    assert s.take(list(new)[0], now=1120.0)[0] == list(new)[0]
    s.close()
