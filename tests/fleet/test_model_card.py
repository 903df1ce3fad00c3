"""Issue 16: a model card per version from the catalogue, owner, status, reviews and field
telemetry: JSON and Markdown from the API, HTML in the console (with the status and overdue
badges, and the manifest's permutation importance when it has one), and the console's review schedule."""

from __future__ import annotations

import time

import numpy as np
from sqlmodel import Session

from fleet.devsim import make_baseline, make_bundle
from fleet.models import Aggregate

DAY = 86400.0


def _explain() -> dict:  # type: ignore[type-arg]
    """The manifest section the compiler writes for a model that only looks at feature 3."""
    from compiler.explain import explain_version

    x = np.random.default_rng(0).normal(size=(200, 8)).astype("float32")
    return explain_version(lambda a: np.stack([a[:, 3] <= 0, a[:, 3] > 0], 1).astype("float32"), x,
                           (x[:, 3] > 0).astype(int), None, "classification", schema_names=[f"px{i}" for i in range(8)])


def test_model_card_json_markdown_html(fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c, op, view = fleet.client, fleet.h("operator"), fleet.h("viewer")
    for v in (1, 2):  # v2 carries the compiler's `explain` section (permutation importance, issue 15)
        make_bundle(tmp_path / f"v{v}.tar", fleet.build_key, version=v, baseline=make_baseline(seed=1),
                    extra={"explain": _explain()} if v == 2 else None)
        assert c.post("/api/models?owner_team=vision&owner_contact=v@example.com&oncall=pd:vision", headers=op,
                      data=(tmp_path / f"v{v}.tar").read_bytes()).status_code == 201
    with Session(fleet.ctx.engine) as db:
        for cohort, req in (("eu", 100), ("us", 50)):
            db.add(Aggregate(model_name="digits", model_version=2, device_class="x86-64-generic", cohort=cohort,
                             window_start=time.time() - 600, requests=req,
                             payload={"requests": req, "errors": {"runtime": 1}, "n_windows": 1}))
        db.commit()
    c.post("/api/models/digits/reviews", headers=op, json={"decision": "keep", "notes": "eu accuracy holds"})
    c.post("/api/models/digits/versions/2/status", headers=op, json={"status": "deprecated", "reason": "v3 soon"})

    card = c.get("/api/models/digits/versions/2/card", headers=view).json
    assert card["owner"]["team"] == "vision" and card["status"]["status"] == "deprecated"
    assert card["build_metrics"]["x86-64-generic"]["accuracy"] > 0.9
    assert card["field_metrics"]["by_cohort"]["eu"]["requests"] == 100
    assert card["lineage"]["parent"] == "digits v1" and card["reviews"][0]["notes"] == "eu accuracy holds"
    assert "dataset_sha256=" + "ab" * 32 in card["data_references"]
    assert card["intended_use"].startswith("not documented")
    assert c.get("/api/models/digits/versions/9/card", headers=view).status_code == 404

    md = c.get("/api/models/digits/versions/2/card?format=markdown", headers=view)
    assert md.status_code == 200 and md.content_type.startswith("text/markdown")
    text = md.get_data(as_text=True)
    for heading in ("# Model card: digits v2", "## Intended use and owner", "## Data references",
                    "## Metrics at build", "## Per-slice results", "## Metrics in the field, by cohort",
                    "## Lineage", "## Review history", "## Known limitations"):
        assert heading in text
    assert "**Status:** deprecated — v3 soon" in text and "| eu | 100 |" in text and "pd:vision" in text
    imp = text.split("## Importance")[1].split("##")[0]
    assert "permutation importance: drop in accuracy" in imp and imp.index("| px3 | 0.51") < imp.index("| px0 |")
    assert card["importance"]["importance"][0]["feature"] == "px3"
    v1 = c.get("/api/models/digits/versions/1/card?format=markdown", headers=view).get_data(as_text=True)
    assert "not computed at build" in v1.split("## Importance")[1]

    assert c.get("/console/models/digits/2/card").status_code in (302, 401)  # sign in first
    c.post("/console/login", data={"token": "viewer-token"})
    page = c.get("/console/models/digits/2/card")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and 'id="status-badge">deprecated<' in html and "eu accuracy holds" in html
    table = html.split('id="card-importance"')[1].split("</table>")[0]
    assert table.index("<td>px3</td>") < table.index("<td>px0</td>") and "0.51" in table
    assert 'id="review-overdue"' not in html
    fleet.client.put("/api/models/digits/owner", headers=op, json={"review_interval_days": 1, "reason": "t"})
    with Session(fleet.ctx.engine) as db:  # the last review was two days ago
        from fleet.models import ModelReview

        for r in db.query(ModelReview).all():
            r.at -= 2 * DAY
        db.commit()
    assert 'id="review-overdue"' in c.get("/console/models/digits/2/card").get_data(as_text=True)
    assert 'id="nav-reviews-overdue"' in c.get("/console/").get_data(as_text=True)  # the nav badge, every page
    assert "/console/models/digits/2/card" in c.get("/console/models/digits").get_data(as_text=True)
    sched = c.get("/console/lifecycle").get_data(as_text=True)
    assert '1 overdue' in sched and 'class="badge alert review-overdue"' in sched


def test_console_retire_and_move_off(fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fleet.models import Device

    c, op = fleet.client, fleet.h("operator")
    for v in (1, 2):  # v2 carries the compiler's `explain` section (permutation importance, issue 15)
        make_bundle(tmp_path / f"v{v}.tar", fleet.build_key, version=v, baseline=make_baseline(seed=1),
                    extra={"explain": _explain()} if v == 2 else None)
        c.post("/api/models", headers=op, data=(tmp_path / f"v{v}.tar").read_bytes())
    with Session(fleet.ctx.engine) as db:
        db.add(Device(id="con-d1", fleet=fleet.settings.fleet_id, device_class="x86-64-generic",
                      installed_name="digits", installed_version=1))
        db.commit()
    c.post("/console/login", data={"token": "viewer-token"})
    assert 'id="lifecycle-actions"' not in c.get("/console/models/digits/1/card").get_data(as_text=True)
    assert c.post("/console/models/digits/1/status", data={"status": "retired", "reason": "x"}).status_code == 403
    c.post("/console/login", data={"token": "operator-token"})
    r = c.post("/console/models/digits/1/status", data={"status": "retired", "reason": ""})
    assert r.status_code == 400 and 'id="error"' in r.get_data(as_text=True)
    r = c.post("/console/models/digits/1/status", data={"status": "retired", "reason": "CVE"})
    assert r.status_code == 302
    html = c.get("/console/models/digits/1/card").get_data(as_text=True)
    assert 'id="status-badge">retired<' in html and 'id="move-off"' in html
    r = c.post("/console/models/digits/1/move-off")
    assert r.status_code == 302 and "/rollouts/" in r.headers["Location"]
    rid = int(r.headers["Location"].rstrip("/").split("/")[-1])
    detail = c.get(f"/api/rollouts/{rid}", headers=fleet.h("viewer")).json
    assert detail["version"] == 2


def test_console_compares_two_versions(fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c, op = fleet.client, fleet.h("operator")
    for v in (1, 2):  # v2 carries the compiler's `explain` section (permutation importance, issue 15)
        make_bundle(tmp_path / f"v{v}.tar", fleet.build_key, version=v, baseline=make_baseline(seed=1),
                    extra={"explain": _explain()} if v == 2 else None)
        c.post("/api/models", headers=op, data=(tmp_path / f"v{v}.tar").read_bytes())
    with Session(fleet.ctx.engine) as db:
        db.add(Aggregate(model_name="digits", model_version=2, cohort="eu", window_start=time.time() - 60,
                         requests=7, payload={"requests": 7, "n_windows": 1}))
        db.commit()
    c.post("/console/login", data={"token": "viewer-token"})
    html = c.get("/console/models/digits/compare?a=1&b=2").get_data(as_text=True)
    # accuracy differs (0.969 vs 0.968), the parent differs (none vs digits v1), tools.onnx is the same
    assert 'class="differs" data-key="build metrics:accuracy"' in html
    assert 'class="differs" data-key="lineage:parent"' in html and "digits v1" in html
    assert 'class="" data-key="lineage:tools.onnx"' in html
    assert 'class="differs" data-key="field:eu requests"' in html
    assert c.get("/console/models/digits/compare?a=1").status_code == 400
    assert c.get("/console/models/digits/compare?a=1&b=9").status_code == 404
