"""Issue 15 item 1, fleet side: a raw-input bundle (scikit-learn pipeline via skl2onnx) served by a
real agent that counts schema violations per raw feature; its telemetry windows, signed, go through
the fleet's real ingest (Processor), which adds the `data_quality` blocks into the aggregates. The
version's data-quality API, the console's model page and the Prometheus gauge report them."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compiler"))
from fleet.devsim import SimDevice  # noqa: E402
from fleet.ingest.store import Processor  # noqa: E402
from tests.compiler.test_raw_input_parity import _agent, tabular, tabular_bundle  # noqa: E402,F401
from tests.fleet.conftest import make_settings  # noqa: E402

pytestmark = pytest.mark.slow
GOOD = {"mean radius": 14.0, "mean texture": 19.0, "mean smoothness": 0.09, "worst area": 800.0, "clinic": "oslo"}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from agent.keys import generate_keypair

    return generate_keypair(tmp_path_factory.mktemp("dqkeys"), "build")


def _window(tmp: Path, keys: tuple[Path, Path], bundle: Path, device_id: str) -> dict:
    """One telemetry window of a real agent: 3 requests, 6 raw rows, 4 of them with schema violations."""
    a = _agent(tmp, keys, device_id)
    try:
        a.install(bundle, allow_new_name=True)
        a.predict(GOOD)
        a.predict([{**GOOD, "clinic": "paris"}, {**GOOD, "worst area": 1e6}, {**GOOD, "mean smoothness": None}])
        a.predict([{**GOOD, "clinic": "paris"}, GOOD])
        payloads = a.telemetry.close_window()
    finally:
        a.stop()
    return next(p for p in payloads if p["model"]["role"] == "active")


def test_fleet_aggregates_and_shows_the_agents_data_quality(tabular_bundle, keys, db_url, tmp_path) -> None:  # noqa: F811
    from fleet.app import create_app, fleet_context
    from fleet.registry.enrolment import create_enrolment_token, enrol

    settings = make_settings(tmp_path, db_url, keys[1])
    app = create_app(settings)
    c, op, view = app.test_client(), {"Authorization": "Bearer operator-token"}, {"Authorization": "Bearer viewer-token"}
    ctx = fleet_context(app)
    try:
        up = c.post("/api/models", headers=op, data=tabular_bundle.bundle_path.read_bytes(),
                    content_type="application/octet-stream")
        assert up.status_code == 201, up.json
        msgs = []
        for i in range(2):
            d = SimDevice(f"dq-{i}", fleet=settings.fleet_id)
            with ctx.session() as db:
                tok, _ = create_enrolment_token(db, "t")
            with ctx.session() as db:
                enrol(db, settings, tok, d.public_key_b64, device_id=d.device_id)
            p = _window(tmp_path, keys, tabular_bundle.bundle_path, d.device_id)
            assert p["data_quality"] == {"clinic": {"unknown_category": 2}, "mean smoothness": {"missing": 1},
                                         "worst area": {"out_of_range": 1}}
            msgs.append((d.topic("telemetry"), d.sign(p)))
        Processor(settings, ctx.engine).process(msgs)

        dq = c.get("/api/models/tabular/versions/1/data-quality", headers=view).json
        assert dq["requests"] == 6 and dq["violations"] == 8 and dq["rate"] == pytest.approx(8 / 6, abs=1e-5)
        rows = {f["feature"]: f for f in dq["features"]}
        assert dq["features"][0]["feature"] == "clinic" and rows["clinic"]["unknown_category"] == 4
        assert rows["mean smoothness"]["missing"] == 2 and rows["worst area"]["out_of_range"] == 2
        assert rows["worst area"]["missing"] == 0 and rows["clinic"]["rate"] == pytest.approx(4 / 6, abs=1e-5)
        assert c.get("/api/models/tabular/versions/1/data-quality?device_class=none", headers=view).json[
            "violations"] == 0
        missing = c.get("/api/models/tabular/versions/9/data-quality", headers=view)
        assert missing.status_code == 404 and missing.json["error"]["code"] == "not-found"

        page = c.get("/console/models/tabular", headers=view)
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.data.decode()))
        assert "Raw-input data quality" in text and "8 in 6 req (1.33 per req)" in text, text[-3000:]
        assert "clinic : unknown category 4" in text and "worst area : out of range 2" in text
        metrics = c.get("/metrics").get_data(as_text=True)
        rate = re.search(r'edgefleet_model_data_quality_violation_rate\{[^}]*model="tabular"[^}]*\} (\S+)', metrics)
        assert rate and float(rate.group(1)) == pytest.approx(8 / 6, abs=1e-5), metrics[-2000:]
    finally:
        ctx.engine.dispose()
