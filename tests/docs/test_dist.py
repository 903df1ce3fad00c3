"""`make dist` builds the wheel and sdist that README.md and docs/deploy.md §0 install from (the
package is not on PyPI), and the wheel carries everything a fleet needs at run time: console
templates, migrations, the device-class catalogue, the agent's schemas."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.doorstep.checkout import fresh_checkout

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent


@pytest.mark.slow
def test_make_dist_builds_an_installable_wheel(tmp_path: Path) -> None:
    src = fresh_checkout(tmp_path / "checkout")
    # the project's venv as `make install` left it (-o: never reinstall it from here)
    res = subprocess.run(["make", f"VENV={VENV}", "-o", str(VENV / ".installed"), "dist"], cwd=src,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    wheel = src / "dist" / "edgefleet-0.1.0-py3-none-any.whl"
    sdist = src / "dist" / "edgefleet-0.1.0.tar.gz"
    assert wheel.is_file() and sdist.is_file(), list((src / "dist").iterdir())

    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("fleet/console/templates/console/base.html", "fleet/migrations/env.py",
                   "devices/x86-64-generic.toml", "edgefleet/cli.py", "agent/cli_agent.py", "compiler/cli.py"):
        assert needed in names, f"{needed} missing from the wheel"
    assert any(n.startswith("fleet/migrations/versions/") and n.endswith(".py") for n in names)
    meta = next(zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert "Provides-Extra: fleet" in meta and "entry_points.txt" in "".join(names)
    assert "pyproject.toml" in " ".join(tarfile.open(sdist).getnames())

    # install it (dependencies come from the project's venv: no network here) and use it elsewhere
    site = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                          str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_") and k != "DATABASE_URL"}
    env["PYTHONPATH"] = str(site)
    code = ("import fleet, sys; assert fleet.__file__.startswith(sys.argv[1]), fleet.__file__; "
            "from edgefleet.cli import main; sys.argv = ['edgefleet', 'fleet', '--data-dir', 'd', 'db', 'upgrade']; "
            "main()")
    res = subprocess.run([sys.executable, "-c", code, str(site)], cwd=elsewhere, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "database at revision" in res.stdout and (elsewhere / "d" / "fleet.db").is_file()
