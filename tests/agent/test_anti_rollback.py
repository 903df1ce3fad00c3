"""Issue 12, seen item 4: anti-rollback by changing names. The device remembers the highest
version it ever accepted for every model name, forever; a new name needs a fleet command that
names it (or the local operator's explicit, audited override)."""

import json

import pytest

from agent.bundle import build_bundle
from agent.keys import load_private_key, sign_document
from agent.lifecycle import InstallError
from agent.protocol import make_command
from tests.agent import models
from tests.agent.conftest import BundleServer, model_ref, wait_for


@pytest.fixture
def other_bundles(tmp_path, model_files, fleet_keys):
    key = load_private_key(fleet_keys["build"])
    out = {}
    for name in ("other", "third"):
        out[name] = tmp_path / f"{name}-v1.bundle"
        build_bundle(out[name], {"model.onnx": model_files["onnx_v1"]},
                     models.manifest_fields(1, "onnx", "model.onnx", model_files["baseline_v1"], name=name), key)
    return out


def _events(a) -> list[dict]:
    return [json.loads(m.payload)["payload"] for m in a.outbox.pending(0, 1000) if m.kind == "event"]


@pytest.mark.slow
def test_rollback_by_renaming_is_refused(agent_factory, config_factory, bundles, other_bundles, fleet_keys) -> None:
    a = agent_factory("ar-1")
    a.install(bundles["v1"])
    a.install(bundles["v2"])
    with pytest.raises(InstallError, match="downgrade"):
        a.install(bundles["v1"])
    # a new name is refused without a fleet command naming it
    with pytest.raises(InstallError, match="new-name"):
        a.install(other_bundles["other"])
    assert a.predictor.active.installed.name == "digits"
    # a fleet-signed install command naming `other` allows it
    server = BundleServer({p.name: p for p in other_bundles.values()})
    fleet = load_private_key(fleet_keys["priv"])
    try:
        ref = model_ref(other_bundles["other"], server.url, a.keys.build)
        cmd = make_command("ar-1", 1, "install", {"model": ref})
        a.commands.receive(json.dumps(sign_document(cmd, fleet)).encode())
        wait_for(lambda: (a.commands.last_command or {}).get("id") == cmd["id"], 30, what="install other")
        assert a.commands.last_command["result"] == "ok", a.commands.last_command
    finally:
        server.close()
    assert (a.predictor.active.installed.name, a.predictor.active.version) == ("other", 1)
    # digits v1 is still refused: the floor for `digits` did not move with the active model
    with pytest.raises(InstallError, match="downgrade"):
        a.install(bundles["v1"])
    assert a.lifecycle.floors.floors == {"digits": 2, "other": 1}
    a.stop()

    # after a restart (same state dir) the floors hold; the operator override is explicit and audited
    b = agent_factory("ar-1")
    assert b.predictor.active.installed.name == "other"
    with pytest.raises(InstallError, match="downgrade"):
        b.install(bundles["v1"])
    with pytest.raises(InstallError, match="new-name"):
        b.install(other_bundles["third"])
    b.install(other_bundles["third"], allow_new_name=True)
    ev = [e for e in _events(b) if e["kind"] == "local-override"]
    assert ev and ev[-1]["details"]["override"] == "allow-new-name"
    with pytest.raises(InstallError, match="downgrade"):
        b.install(bundles["v1"], allow_new_name=True)  # the override never lowers a floor
    assert json.loads((b.state_dir / "models" / "versions.json").read_text())["floors"] == {
        "digits": 2, "other": 1, "third": 1}


@pytest.mark.slow
def test_cli_install_new_name_needs_the_flag(tmp_path, fleet_keys, bundles, other_bundles) -> None:
    import subprocess
    import sys

    from tests.agent.conftest import REPO, make_config

    cfg = make_config(tmp_path / "s", fleet_keys["pub"], device_id="ar-cli").write(tmp_path / "a.toml")
    run = [sys.executable, "-m", "agent", "install", "--config", str(cfg)]
    assert subprocess.run([*run, str(bundles["v2"])], cwd=REPO, capture_output=True).returncode == 0
    r = subprocess.run([*run, str(other_bundles["other"])], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 1 and "new-name" in r.stderr
    r = subprocess.run([*run, "--allow-new-name", str(other_bundles["other"])], cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert "local-override" in r.stderr  # the override is in the agent's log


def test_damaged_floors_refuse_to_start_clearly(config_factory) -> None:
    """Forgetting the floors would allow downgrades: a damaged versions.json stops the agent with
    one clear line instead of starting without them."""
    from agent.config import ConfigError
    from agent.daemon import Agent

    cfg = config_factory("ar-dmg")
    (cfg.state_path / "models").mkdir(parents=True)
    (cfg.state_path / "models" / "versions.json").write_text('{"floors": {"digits": "x"')
    with pytest.raises(ConfigError, match="versions.json is damaged"):
        Agent(cfg)
