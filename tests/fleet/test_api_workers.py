"""Scale-out of the API (issue 19 item 4): two `fleet serve --production --no-ingest` processes
(waitress) on one PostgreSQL database, as behind a load balancer. What one worker writes the other
honours, and a console login on one is a login on the other when they share `secret_key`, as
docs/deploy.md says they must (with a key of its own, a worker sends the user back to the login)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from fleet.ingest.broker import free_port
from tests.waiting import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def _worker(tmp_path: Path, db_url: str, port: int, secret: str) -> subprocess.Popen:
    conf = tmp_path / "fleet.toml"  # no evaluators or MQTT work: two API workers only
    conf.write_text("[fleet]\nstart_rollouts = false\ndrift_interval_s = 0\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGEFLEET_FLEET_CONFIG": str(conf), "DATABASE_URL": db_url,
           "EDGEFLEET_API_TOKENS": "admin:boot-admin", "EDGEFLEET_SECRET_KEY": secret}
    return subprocess.Popen([sys.executable, "-m", "fleet", "--data-dir", str(tmp_path / "fd"), "serve", "--production",
                             "--no-ingest", "--port", str(port)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"worker-{port}.log", "wb"))


def _up(url: str) -> bool:
    try:
        return requests.get(f"{url}/api/tokens", headers={"Authorization": "Bearer boot-admin"}, timeout=2).ok
    except requests.RequestException:
        return False


def test_two_api_workers_share_writes_and_console_logins(pg_database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ports = [free_port() for _ in range(3)]
    procs = [_worker(tmp_path, pg_database, p, s) for p, s in zip(ports, ("shared-key", "shared-key", "own-key"), strict=True)]
    a, b, c = (f"http://127.0.0.1:{p}" for p in ports)
    try:
        for url in (a, b, c):
            wait_for(lambda url=url: _up(url), 60, f"worker {url}")
        made = requests.post(f"{a}/api/tokens", headers={"Authorization": "Bearer boot-admin"},
                             json={"name": "ops", "role": "viewer"}, timeout=10)
        assert made.status_code == 201
        token = made.json()["token"]
        seen = requests.get(f"{b}/api/devices", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert seen.status_code == 200  # a token created through worker A works on worker B
        s = requests.Session()
        assert s.post(f"{a}/console/login", data={"token": token}, allow_redirects=False, timeout=10).status_code == 302
        page = s.get(f"{b}/console/devices", allow_redirects=False, timeout=10)
        assert page.status_code == 200 and "Devices" in page.text  # A's cookie is a login on B
        other = s.get(f"{c}/console/devices", allow_redirects=False, timeout=10)
        assert other.status_code == 302 and "/console/login" in other.headers["Location"]  # another key: no session
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)
