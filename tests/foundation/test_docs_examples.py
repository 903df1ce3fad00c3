"""The configuration examples in docs/ are real: they load with the same code a user runs."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _blocks(doc: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (DOCS / doc).read_text(), flags=re.S)


def test_deploy_fleet_toml_loads(tmp_path: Path) -> None:
    from fleet.settings import load_settings

    (block,) = _blocks("deploy.md", "toml")
    path = tmp_path / "fleet.toml"
    path.write_text(block)
    s = load_settings(path, env={})
    assert s.fleet_id == "prod" and s.device_mqtt_url == "mqtts://broker.example.com:8883"
    assert s.ingest.session_expiry_s == 600 and s.database_url.startswith("postgresql+psycopg://")
    assert "PASSWORD" not in repr(s)   # never printed


def test_deploy_rollout_example_is_a_valid_spec() -> None:
    import json

    from fleet.rollouts.spec import RolloutSpec

    body = next(b for b in _blocks("deploy.md", "bash") if "/api/rollouts" in b)
    spec = json.loads(re.search(r"-d '(.*?)'", body, flags=re.S).group(1))
    parsed = RolloutSpec.from_dict(spec)
    assert [w.name for w in parsed.waves] == ["canary", "early", "all"]
    assert parsed.waves[-1].gates.require_approval and not parsed.waves[0].gates.require_approval
