"""docs/cli.md is what a user types: its bash session runs as written (bash, the installed
`edgefleet` command) against a live fleet, its profile file loads, its rollout spec is one the
fleet accepts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.ops.profile import connect
from edgefleet.ops.rollout_spec import SpecFlags, build_spec
from tests.cli.conftest import OPERATOR, LiveFleet, run_ok
from tests.rollouts.simdevice import Behaviour

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
REPO = DOC.parents[1]


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_profile_example_loads(tmp_path: Path) -> None:
    (toml,) = [b for b in blocks("toml") if "[profiles." in b]
    path = tmp_path / "profile.toml"
    path.write_text(toml)
    path.chmod(0o600)
    env = {"EDGEFLEET_PROFILE": str(path), "PROD_FLEET_TOKEN": "t-prod"}
    lab = connect(None, None, None, None, env)
    assert (lab.url, lab.token) == ("http://127.0.0.1:8080", "eft_lab_operator_token")
    prod = connect(None, None, "prod", None, env)
    assert (prod.url, prod.token, prod.timeout_s) == ("https://fleet.example.com", "t-prod", 60.0)


def test_rollout_spec_example_is_valid(tmp_path: Path) -> None:
    from fleet.rollouts.spec import RolloutSpec

    (toml,) = [b for b in blocks("toml") if "model_name" in b]
    path = tmp_path / "rollout.toml"
    path.write_text(toml)
    spec = RolloutSpec.from_dict(build_spec(path, SpecFlags(version=8)))
    assert spec.version == 8 and [w.name for w in spec.waves] == ["canary", "all"]
    assert spec.waves[1].gates.require_approval and spec.waves[0].gates.max_prediction_psi == 0.1


@pytest.mark.mqtt
@pytest.mark.slow
def test_the_documented_session_runs_as_written(live_fleet: LiveFleet, tmp_path: Path) -> None:
    (session,) = [b for b in blocks("bash") if "edgefleet rollout create" in b]
    run_ok(live_fleet.cli("models", "upload", str(live_fleet.bundles[1])))
    live_fleet.start_devices(10, {2: Behaviour(drift=True)})
    work = tmp_path / "user"
    (work / "build").mkdir(parents=True)
    (work / "build" / "digits-v2.bundle").write_bytes(live_fleet.bundles[2].read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update(PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}", PYTHONPATH=str(REPO),
               EDGEFLEET_URL=live_fleet.url, EDGEFLEET_TOKEN=OPERATOR, FLEET=live_fleet.fleet_id,
               EDGEFLEET_PROFILE=str(tmp_path / "none.toml"))
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", session], cwd=work, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "added: digits v2" in res.stdout and "Gates (measured vs limit" in res.stdout
    assert "rolled back: now rolled-back" in res.stdout
    listed = json.loads(run_ok(live_fleet.cli("rollout", "list", "--json")))["rollouts"]
    assert [r["status"] for r in listed] == ["rolled-back"]
