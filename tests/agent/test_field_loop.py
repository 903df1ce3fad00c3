"""Issue 14 on the device: confidence in telemetry, request ids, feedback and outcomes per slice."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.confidence import CONFIDENCE_EDGES, MonitorSpec, probabilities, top2
from agent.config import TelemetryConfig
from agent.outcomes import OutcomeStore, UnknownRequest

SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "telemetry.schema.json"


def _truth_probs(digits_x: np.ndarray, agent: Any) -> np.ndarray:
    out = agent.predictor.active.run({"x": digits_x.astype(np.float32)})[0]
    return probabilities(out, None)


def test_confidence_histogram_matches_numpy(agent_factory, bundles, digits) -> None:
    """Before issue 14 a window had no confidence: here its histogram equals numpy's on the same rows."""
    a = agent_factory("conf-1", telemetry=TelemetryConfig(sample_rate=1.0, max_samples_per_s=100000))
    a.install(bundles["v1"])
    x = digits[0][:200].astype(np.float32)
    for i in range(0, 200, 4):
        a.predict(x[i:i + 4])
    p = a.flush_telemetry()[0]
    conf = p["confidence"]
    _, top1, margin = top2(_truth_probs(x, a))
    want = np.bincount(np.searchsorted(CONFIDENCE_EDGES, top1, side="right"), minlength=len(CONFIDENCE_EDGES) + 1)
    assert conf["counts"] == want.tolist() and sum(conf["margin_counts"]) == 200
    assert conf["low"] == int((top1 < 0.5).sum()) and conf["low_rate"] == pytest.approx((top1 < 0.5).mean(), abs=1e-6)
    assert len(p["prediction_records"]) == 100  # capped per window; ids are the requests' own
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate({"payload": {**p, "seq": 1, "sent_at": 1.0},
                         "signature": {"alg": "Ed25519", "key_id": "0" * 16, "sig": "x"}}, schema)


def test_feedback_builds_confusion_per_slice(agent_factory, bundles, digits) -> None:
    a = agent_factory("fb-1", telemetry=TelemetryConfig(sample_rate=0.0))
    a.install(bundles["v1"])
    spec = a.predictor.active.monitor
    a.predictor.active.slicer.spec = a.predictor.active.monitor = MonitorSpec(  # declare a metadata slice
        n_classes=spec.n_classes, metadata_keys=("region",), min_slice_count=5)
    from agent.confidence import Slicer

    a.predictor.active.slicer = Slicer(a.predictor.active.monitor)
    a.outcomes.specs[1] = a.predictor.active.monitor
    x, y = digits[0][:120].astype(np.float32), digits[1][:120]
    results = []
    for i in range(120):
        r = a.predict(x[i:i + 1], {"region": "eu" if i < 100 else "us"})
        assert isinstance(r, dict) and "logits" in r  # backward compatible: still the outputs by name
        results.append(r)
    ids = [r.request_id for r in results]
    assert len(set(ids)) == 120
    preds = np.array([int(np.argmax(r["logits"])) for r in results])
    for rid, label in zip(ids[:110], y[:110], strict=True):
        a.feedback(rid, int(label))
    with pytest.raises(UnknownRequest):
        a.feedback(ids[0], int(y[0]))  # a label counts once
    with pytest.raises(UnknownRequest):
        a.feedback("nope", 1)
    p = a.flush_telemetry()[0]
    out = p["outcomes"]
    assert out["labelled"] == 110 and set(out["slices"]) == {"region=eu", "region=us"}
    eu = np.array(out["slices"]["region=eu"]["confusion"])
    truth = np.zeros((10, 10), dtype=int)
    np.add.at(truth, (y[:100], preds[:100]), 1)
    assert (eu == truth).all()
    assert sum(out["calibration"]["n"]) == 110
    assert sum(out["calibration"]["correct"]) == int((preds[:110] == y[:110]).sum())


def test_small_slices_are_merged(agent_factory, bundles, digits) -> None:
    a = agent_factory("fb-2", telemetry=TelemetryConfig(sample_rate=0.0))
    a.install(bundles["v1"])
    from agent.confidence import Slicer

    m = a.predictor.active
    m.monitor = MonitorSpec(n_classes=10, metadata_keys=("site",), min_slice_count=10, max_slices=7)
    m.slicer = Slicer(m.monitor)
    a.outcomes.specs[1] = m.monitor
    x, y = digits[0][:60].astype(np.float32), digits[1][:60]
    for i in range(60):
        r = a.predict(x[i:i + 1], {"site": f"s{i % 6}" if i < 30 else "big"})
        a.feedback(r.request_id, int(y[i]))
    out = a.flush_telemetry()[0]["outcomes"]
    # six sites with 5 labels each are under min_count: only "big" (30) stands alone
    assert set(out["slices"]) == {"site=big", "_other"}
    assert out["slices"]["_other"]["n"] == 30
    capped = Slicer(MonitorSpec(n_classes=10, metadata_keys=("site",), max_slices=3))
    assert [capped.key({"site": f"s{i}"}) for i in range(5)] == ["site=s0", "site=s1", "site=s2", "_other", "_other"]


def test_local_server_request_id_and_feedback(config_factory, bundles, digits) -> None:
    from agent.daemon import Agent
    from tests.agent.conftest import free_port

    port = free_port()
    a = Agent(config_factory("srv-1", http_port=port, sample_rate=0.0)).start()
    try:
        a.install(bundles["v1"])
        x, y = digits[0][:3].astype(np.float32), digits[1][:3]

        def post(path: str, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(doc).encode(),
                                         {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        code, ans = post("/v1/predict", {"inputs": {"x": x[:1].tolist()}, "metadata": {"region": "eu"}})
        assert code == 200 and ans["request_id"] and "logits" in ans["outputs"]
        assert post("/v1/feedback", {"request_id": ans["request_id"], "label": int(y[0])}) == (
            200, {"accepted": 1, "unknown": [], "invalid": []})
        assert post("/v1/feedback", {"request_id": ans["request_id"], "label": 1})[0] == 404
        _, b = post("/v1/predict", {"inputs": {"x": x[1:2].tolist()}})
        assert post("/v1/feedback", {"request_id": b["request_id"], "label": 99})[0] == 400
        assert post("/v1/feedback", {"label": 1})[0] == 400
        out = a.flush_telemetry()[0]["outcomes"]
        assert out["labelled"] == 1 and out["invalid"] == 1
    finally:
        a.stop()


def test_store_horizon_and_cap(tmp_path: Path) -> None:
    class M:
        version = 3
        monitor = MonitorSpec(n_classes=3, softmax=True)

    s = OutcomeStore(tmp_path / "o.sqlite", horizon_s=100, max_records=50)
    for i in range(80):
        s.record(f"r{i}", M, np.array([[0.0, 2.0, 1.0]]), "_all")
    s.flush(now=1000.0)
    assert len(s) == 50  # the oldest beyond the cap are pruned
    s.record("late", M, np.array([[0.0, 0.0, 5.0]]), "_all")
    s.flush(now=1200.0)  # everything older than the horizon goes
    assert len(s) == 1
    row = s.take("late", now=1200.0)
    assert row[1] == 3 and row[2] == 2
    s.close()


def test_many_classes_send_sparse_confusion() -> None:
    """1000 classes must not put a million numbers into a window: nonzero cells only, merged exactly."""
    from agent.outcomes import OutcomeWindow
    from fleet.analytics import merge_payloads

    w = OutcomeWindow(MonitorSpec(n_classes=1000, min_slice_count=1))
    for i in range(50):
        w.add(("r", 1, i % 7, None, 3, "_all"), i % 5)
    doc = w.to_dict()
    cells = doc["slices"]["_all"]["confusion_sparse"]
    assert "confusion" not in doc["slices"]["_all"] and sum(c[2] for c in cells) == 50 and len(cells) <= 35
    q = merge_payloads([{"outcomes": doc}, {"outcomes": doc}])
    assert q.labelled == 100 and q.correct == 2 * sum(1 for i in range(50) if i % 7 == i % 5)


def test_full_disk_drops_outcome_rows_and_keeps_serving(tmp_path: Path) -> None:
    import sqlite3

    from agent.disk_guard import DiskGuard

    class M:
        version = 1
        monitor = MonitorSpec(n_classes=3)

    disk = DiskGuard(tmp_path)
    s = OutcomeStore(tmp_path / "o.sqlite", disk=disk)
    real = s._db

    class Full:
        def execute(self, sql: str, *a: Any) -> Any:
            return real.execute(sql, *a)

        def executemany(self, *a: Any) -> Any:
            raise sqlite3.OperationalError("database or disk is full")

    s._db = Full()  # type: ignore[assignment]
    s.record("a", M, np.array([[0.1, 0.8, 0.1]]), "_all")
    assert s.flush() == 0 and s.dropped == 1 and disk.full and disk.failures["outcomes"] == 1
    with pytest.raises(UnknownRequest):
        s.take("a")
    s._db = real
    s.record("b", M, np.array([[0.1, 0.8, 0.1]]), "_all")
    assert s.flush() == 1 and not disk.full       # space is back: rows are kept again
    assert s.take("b")[2] == 1
    s.close()


def test_unix_socket_answer_carries_request_id(config_factory, bundles, digits, tmp_path: Path) -> None:
    from agent.daemon import Agent
    from agent.local_server import LocalClient

    sock = str(tmp_path / "a.sock")
    a = Agent(config_factory("sock-1", unix_socket=sock, sample_rate=0.0)).start()
    try:
        a.install(bundles["v1"])
        c = LocalClient(sock)
        outs, header = c.call({"x": digits[0][:1].astype(np.float32)}, metadata={"region": "eu"})
        c.close()
        assert "logits" in outs and header["request_id"]
        assert a.feedback(header["request_id"], int(digits[1][0]))["version"] == 1
    finally:
        a.stop()
