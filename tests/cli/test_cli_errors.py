"""What an operator sees when something is wrong: one line on stderr, exit 2 for bad input (no URL,
a wrong id, an invalid spec or profile), exit 1 for a refused or failed operation (unreachable
fleet, bad token, a conflict); never a traceback. Also: --json output parses, every option has
help, the connection is resolved from flags, environment and profile in that order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import click.testing
import pytest

from edgefleet.cli import COMMANDS, LazyGroup, cli
from edgefleet.ops.client import OpsError
from edgefleet.ops.profile import connect
from fleet.ingest.broker import free_port
from tests.cli.conftest import OPERATOR, VIEWER, LiveFleet, run_ok, spec_file

REPO = Path(__file__).resolve().parents[2]
OPS_GROUPS = ("rollout", "alerts", "models")


def edgefleet(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed command, exactly as an operator runs it (a fresh process, its own env)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    return subprocess.run([sys.executable, "-m", "edgefleet", *args], capture_output=True, text=True, cwd=cwd,
                          env={**base, "PYTHONPATH": str(REPO), "XDG_CONFIG_HOME": str(cwd / "xdg"), **env},
                          timeout=60)


def one_line(res: subprocess.CompletedProcess[str], code: int) -> str:
    err = res.stderr
    assert res.returncode == code, (res.returncode, err)
    assert "Traceback" not in err and err.endswith("\n") and err.count("\n") == 1, err
    return err


def test_no_url_and_unreachable_fleet_are_one_line(tmp_path: Path) -> None:
    res = edgefleet("rollout", "list", env={}, cwd=tmp_path)
    assert "no fleet URL configured" in one_line(res, 2) and "EDGEFLEET_URL" in res.stderr
    res = edgefleet("alerts", "list", env={"EDGEFLEET_URL": f"http://127.0.0.1:{free_port()}"}, cwd=tmp_path)
    assert "connection refused" in one_line(res, 1)
    res = edgefleet("models", "list", "--url", "fleet.example.com", env={}, cwd=tmp_path)
    assert "invalid fleet URL" in one_line(res, 2)
    res = edgefleet("rollout", "create", "--waves", "10,50", "--dry-run", env={}, cwd=tmp_path)
    assert "--model and --version" in one_line(res, 2)     # local input errors need no fleet at all


def test_server_refusals_map_to_exit_codes(live_fleet: LiveFleet, tmp_path: Path) -> None:
    env = {"EDGEFLEET_URL": live_fleet.url, "EDGEFLEET_TOKEN": "not-a-token"}
    res = edgefleet("rollout", "list", env=env, cwd=tmp_path)
    assert "HTTP 401" in one_line(res, 1) and "$EDGEFLEET_TOKEN" in res.stderr
    res = edgefleet("rollout", "list", env={"EDGEFLEET_URL": live_fleet.url}, cwd=tmp_path)
    assert "no token configured" in one_line(res, 1)
    env["EDGEFLEET_TOKEN"] = OPERATOR
    res = edgefleet("rollout", "show", "9999", env=env, cwd=tmp_path)
    assert "no rollout 9999 (HTTP 404 not-found)" in one_line(res, 2)
    res = edgefleet("models", "show", "nosuch", env=env, cwd=tmp_path)
    assert "HTTP 404" in one_line(res, 2)
    res = edgefleet("alerts", "ack", "77", env=env, cwd=tmp_path)
    assert "no alert 77" in one_line(res, 2)
    # the server's own validation message comes through: an unknown model, decreasing waves
    res = edgefleet("rollout", "create", "--model", "nosuch", "--version", "1", env=env, cwd=tmp_path)
    assert "no build of nosuch v1 is uploaded" in one_line(res, 2)
    run_ok(live_fleet.cli("models", "upload", str(live_fleet.bundles[1])))
    res = edgefleet("rollout", "create", "--model", "digits", "--version", "1", "--waves", "50,10", env=env,
                    cwd=tmp_path)
    assert "cumulative" in one_line(res, 2) and "HTTP 422" in res.stderr
    res = edgefleet("rollout", "pause", "1", env={**env, "EDGEFLEET_TOKEN": VIEWER}, cwd=tmp_path)
    assert "HTTP 403" in one_line(res, 1)
    bundle = tmp_path / "junk.bundle"
    bundle.write_bytes(b"not a bundle")
    res = edgefleet("models", "upload", str(bundle), env=env, cwd=tmp_path)
    assert str(bundle) in one_line(res, 2) and "HTTP 422" in res.stderr


def test_json_output_parses_and_tables_have_headers(live_fleet: LiveFleet) -> None:
    f = live_fleet
    uploaded = json.loads(run_ok(f.cli("models", "upload", str(f.bundles[1]), "--json")))
    assert isinstance(uploaded, list) and uploaded[0]["created"] is True and uploaded[0]["version"] == 1
    assert json.loads(run_ok(f.cli("models", "list", "--json")))["items"][0]["name"] == "digits"
    assert json.loads(run_ok(f.cli("rollout", "list", "--json"))) == {"rollouts": []}
    assert json.loads(run_ok(f.cli("alerts", "list", "--json", token=VIEWER)))["total"] == 0
    assert run_ok(f.cli("rollout", "list")).strip() == "no rollouts"
    # the same through a profile file alone (no URL or token in the environment)
    prof = f.tmp / "profile.toml"
    prof.write_text(f'default = "live"\n[profiles.live]\nurl = "{f.url}"\ntoken = "{VIEWER}"\n')
    prof.chmod(0o600)
    res = f.cli("models", "list", "--json", token=None, EDGEFLEET_URL="", EDGEFLEET_PROFILE=str(prof))
    assert json.loads(run_ok(res))["total"] == 1
    res = f.cli("models", "upload", str(f.bundles[2]), token=None, EDGEFLEET_URL="", EDGEFLEET_PROFILE=str(prof))
    assert res.exit_code == 1 and "HTTP 403" in res.stderr and "profile 'live'" not in res.stderr
    assert run_ok(f.cli("models", "list")).splitlines()[0].startswith("NAME")


def test_spec_file_and_flags(tmp_path: Path, no_fleet_env: Path) -> None:
    toml = tmp_path / "rollout.toml"
    toml.write_text('model_name = "digits"\nversion = 2\n[target]\nfleet = "prod"\ndevice_classes = ["x86-64-generic"]\n'
                    '[gates]\nmax_prediction_psi = 0.1\n[[waves]]\nname = "canary"\ncount = 2\n'
                    '[[waves]]\nname = "all"\npercent = 100\n')
    r = click.testing.CliRunner().invoke(cli, ["rollout", "create", str(toml), "--version", "3", "--attr",
                                               "region=eu", "--gate", "soak_s=30", "--dry-run", "--json"])
    spec = json.loads(r.stdout)
    assert spec["version"] == 3 and spec["target"] == {"fleet": "prod", "device_classes": ["x86-64-generic"],
                                                       "attributes": {"region": "eu"}}
    assert spec["gates"] == {"max_prediction_psi": 0.1, "soak_s": 30}
    assert [w["name"] for w in spec["waves"]] == ["canary", "all"]
    js = spec_file(tmp_path / "s.json", {"model_name": "digits", "version": 1})
    r = click.testing.CliRunner().invoke(cli, ["rollout", "create", str(js), "--dry-run", "--json"])
    assert [w["name"] for w in json.loads(r.stdout)["waves"]] == ["wave-1", "wave-2", "wave-3", "wave-4"]
    (tmp_path / "bad.toml").write_text("model_name = \n")
    r = click.testing.CliRunner().invoke(cli, ["rollout", "create", str(tmp_path / "bad.toml"), "--dry-run"])
    assert r.exit_code == 2 and "is not valid TOML" in r.stderr
    r = click.testing.CliRunner().invoke(cli, ["rollout", "create", "--model", "m", "--version", "1",
                                               "--attr", "region", "--dry-run"])
    assert r.exit_code == 2 and "--attr takes KEY=VALUE" in r.stderr


def test_connection_precedence_and_profiles(tmp_path: Path) -> None:
    prof = tmp_path / "profile.toml"
    prof.write_text('default = "lab"\n[profiles.lab]\nurl = "http://lab:8080"\ntoken = "lab-tok"\n'
                    '[profiles.prod]\nurl = "https://prod.example"\ntoken_env = "PROD_TOKEN"\ntimeout = 5\n')
    prof.chmod(0o600)
    env = {"EDGEFLEET_PROFILE": str(prof), "PROD_TOKEN": "prod-tok"}
    c = connect(None, None, None, None, env)
    assert (c.url, c.token, c.timeout_s) == ("http://lab:8080", "lab-tok", 30.0)       # the file's default
    c = connect(None, None, "prod", None, env)
    assert (c.url, c.token, c.timeout_s) == ("https://prod.example", "prod-tok", 5.0)
    c = connect(None, None, None, None, {**env, "EDGEFLEET_URL": "http://env:1", "EDGEFLEET_TOKEN": "env-tok"})
    assert (c.url, c.token) == ("http://env:1", "env-tok")                              # env beats default
    c = connect(None, None, "prod", None, {**env, "EDGEFLEET_URL": "http://env:1"})
    assert c.url == "https://prod.example"                                              # explicit profile beats env
    c = connect("http://flag:2", "flag-tok", "prod", 3, env)
    assert (c.url, c.token, c.timeout_s) == ("http://flag:2", "flag-tok", 3)            # flags beat all
    c = connect(None, None, None, None, {**env, "EDGEFLEET_URL": "http://elsewhere:1"})
    assert c.token == ""                      # the default profile's token is never sent to another URL
    for bad, msg in ((prof.read_text() + "[profiles.x]\nurll = 'http://x'\n", "unknown key 'urll'"),
                     ('default = "nope"\n[profiles.lab]\nurl = "http://lab"\n', "no profile 'nope' (known: lab)"),
                     ("[profiles.lab\n", "is not valid TOML")):
        prof.write_text(bad)
        with pytest.raises(OpsError, match=msg.replace("(", r"\(").replace(")", r"\)")) as exc:
            connect(None, None, None, None, env)
        assert exc.value.exit_code == 2
    with pytest.raises(OpsError, match="no profile file"):
        connect(None, None, "lab", None, {"EDGEFLEET_PROFILE": str(tmp_path / "missing.toml")})


def test_devices_list_json_and_fleet_devices_table(tmp_path: Path) -> None:
    r = click.testing.CliRunner().invoke(cli, ["devices", "list", "--json"])
    classes = json.loads(r.stdout)
    assert r.exit_code == 0 and "x86-64-generic" in [c["name"] for c in classes]
    assert all("limits" in c for c in classes)
    data = tmp_path / "fleetdata"
    r = click.testing.CliRunner().invoke(cli, ["fleet", "--data-dir", str(data), "devices", "list"],
                                         env={"DATABASE_URL": "", "EDGEFLEET_CONFIG": ""})
    assert r.exit_code == 0 and r.stdout.strip() == "no devices", r.output
    from sqlmodel import Session

    from fleet.db import init_db, make_engine
    from fleet.models import Device

    engine = make_engine(f"sqlite:///{data / 'fleet.db'}")
    init_db(engine)
    with Session(engine) as s:
        s.add(Device(id="dev-a", device_class="x86-64-generic", public_key="k", attributes={"region": "eu"},
                     installed_name="digits", installed_version=2, last_seen=0.0))
        s.commit()
    engine.dispose()
    r = click.testing.CliRunner().invoke(cli, ["fleet", "--data-dir", str(data), "devices", "list"],
                                         env={"DATABASE_URL": "", "EDGEFLEET_CONFIG": ""})
    head, row = r.stdout.splitlines()
    assert head.split() == ["ID", "FLEET", "STATUS", "CLASS", "INSTALLED", "ONLINE", "LAST", "SEEN", "ATTRIBUTES"]
    assert row.split()[:6] == ["dev-a", "default", "active", "x86-64-generic", "digits", "v2"]
    assert row.endswith("region=eu")


def _options(cmd: click.Command, path: str = "") -> list[tuple[str, click.Parameter]]:
    out = [(f"{path} {cmd.name}", p) for p in cmd.params if isinstance(p, click.Option)]
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            out += _options(sub, f"{path} {cmd.name}")
    return out


def test_every_option_has_help_and_commands_are_registered() -> None:
    group = LazyGroup()
    ctx = click.Context(cli)
    opts = []
    for name in (*OPS_GROUPS, "devices"):
        assert name in COMMANDS and COMMANDS[name][1] == ""       # no extra needed: stdlib HTTP only
        opts += _options(group.get_command(ctx, name))
    missing = [f"{where} {p.name}" for where, p in opts if not p.help and p.name != "help"]
    assert not missing, missing
    rollout = group.get_command(ctx, "rollout")
    assert set(rollout.commands) >= {"create", "list", "show", "approve", "pause", "resume", "abort", "rollback"}
    assert all(c.help for c in rollout.commands.values())


def test_operator_cli_needs_no_fleet_extra() -> None:
    """rollout/alerts/models are registered without an extra: importing them loads no fleet stack."""
    code = ("import sys, edgefleet.ops.rollout, edgefleet.ops.alerts, edgefleet.ops.models; "
            "print(' '.join(m for m in ('fleet', 'flask', 'sqlmodel', 'sqlalchemy', 'requests', 'torch') "
            "if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "", res.stdout + res.stderr
