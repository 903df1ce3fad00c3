"""A private PostgreSQL primary and its streaming read replica, for the read-replica tests: initdb,
pg_basebackup -R and pg_ctl from the server's own binaries, on free ports, in a temporary folder
(run as the postgres user when the tests run as root: the server refuses root)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def _bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent  # /usr/local/bin/initdb may link into the server's bindir
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name))
    return Path(dirs[-1]) if dirs else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Pair:
    primary_url: str
    replica_url: str

    def sql(self, url: str, statement: str) -> object:
        import psycopg

        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as c:
            return c.execute(statement).fetchone()


@contextmanager
def primary_and_replica() -> Iterator[Pair]:
    bindir = _bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL's server binaries (initdb, pg_ctl, pg_basebackup) are not installed")
    base = Path(tempfile.mkdtemp(prefix="edgefleet-pgrepl-"))
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_pg:
        shutil.chown(base, "postgres", "postgres")

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*as_pg, str(bindir / argv[0]), *argv[1:]], capture_output=True, text=True,
                              timeout=120, check=False)
        if done.returncode:
            raise RuntimeError(f"{argv[0]} failed: {done.stderr.strip() or done.stdout.strip()}")
        return done

    p1, p2 = _free_port(), _free_port()
    primary, replica = base / "primary", base / "replica"
    started: list[Path] = []
    try:
        run("initdb", "-D", str(primary), "-U", "postgres", "--auth=trust", "--no-sync")
        conf = (f"\nport = {p1}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{base}'\n"
                "wal_level = replica\nmax_wal_senders = 4\nfsync = off\nsynchronous_commit = off\n")
        with open(primary / "postgresql.conf", "a") as f:  # noqa: PTH123
            f.write(conf)
        run("pg_ctl", "-D", str(primary), "-l", str(base / "primary.log"), "-w", "start")
        started.append(primary)
        run("pg_basebackup", "-h", "127.0.0.1", "-p", str(p1), "-U", "postgres", "-D", str(replica), "-R",
            "-X", "stream")
        with open(replica / "postgresql.conf", "a") as f:  # noqa: PTH123
            f.write(f"\nport = {p2}\n")
        run("pg_ctl", "-D", str(replica), "-l", str(base / "replica.log"), "-w", "start")
        started.append(replica)
        pair = Pair(f"postgresql+psycopg://postgres@127.0.0.1:{p1}/postgres",
                    f"postgresql+psycopg://postgres@127.0.0.1:{p2}/postgres")
        assert pair.sql(pair.replica_url, "SELECT pg_is_in_recovery()") == (True,)
        yield pair
    finally:
        for d in reversed(started):
            subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(d), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60, check=False)
        shutil.rmtree(base, ignore_errors=True)
