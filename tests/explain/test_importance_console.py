"""Issue 15 items 3 and 5 in the catalogue and console: two versions whose class hangs on different
features; the version API returns each version's importance, the model page shows importance per
version and the change between them, and the drift page shows the importance-weighted share."""

from __future__ import annotations

import re

from tests.explain.tabular import tabular_bundle


def _text(html: bytes) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html.decode()))


def test_version_api_and_model_page_show_importance_and_its_change(fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c, op = fleet.client, fleet.h("operator")
    for version, hot in ((1, 7), (2, 3)):
        path, _ = tabular_bundle(tmp_path / f"tab-v{version}.bundle", fleet.build_key, rest=0.0, version=version,
                                 hot=hot)
        r = c.post("/api/models", headers=op, data=path.read_bytes(), content_type="application/octet-stream")
        assert r.status_code == 201, r.json
        assert r.json["explain"]["importance"][0]["feature"] == f"f{hot}"
    v2 = c.get("/api/models/tab/versions/2", headers=fleet.h("viewer")).get_json()
    ex = (v2.get("items") or [v2])[0]["explain"]
    assert ex["method"] == "permutation" and ex["metric"] == "accuracy" and ex["importance"][0]["feature"] == "f3"

    page = c.get("/console/models/tab", headers=fleet.h("viewer"))
    assert page.status_code == 200
    text = _text(page.data)
    assert "What each version relies on" in text and "Δ v2 vs v1" in text
    row3 = re.search(r"f3 ((?:[-+]?\d\.\d{4}|—) ?)+", text)
    row7 = re.search(r"f7 ((?:[-+]?\d\.\d{4}|—) ?)+", text)
    assert row3 and row7, text[-1500:]
    assert row3.group(0).split()[-1].startswith("+") and row7.group(0).split()[-1].startswith("-")

    # the drift page shows the importance-weighted share next to the plain count, and each feature's weight
    drift = _text(c.get("/console/models/tab/2/drift", headers=fleet.h("viewer")).data)
    assert "Drifted importance" in drift and "by count" in drift and "imp 1.000" in drift
