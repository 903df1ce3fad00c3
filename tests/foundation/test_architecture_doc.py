"""docs/architecture.md's code map and core table name real places: every backticked path in it
exists, and every fleet/ subpackage is on the map (a new one must be drawn there)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "architecture.md").read_text()


def test_every_path_the_architecture_doc_names_exists():
    paths = set(re.findall(r"`((?:agent|compiler|fleet|edgefleet|devices)/[\w/.]*)`", DOC))
    assert len(paths) >= 15
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, missing


def test_every_fleet_subpackage_is_on_the_code_map():
    code_map = DOC.split("## Code map", 1)[1]
    subpackages = sorted(p.parent.name for p in (ROOT / "fleet").glob("*/__init__.py"))
    assert {"registry", "catalogue", "ingest", "drift", "rollouts", "api", "console"} <= set(subpackages)
    absent = [s for s in subpackages if f"{s}/" not in code_map]
    assert not absent, absent
