"""Shared fixtures: a throwaway PostgreSQL server on loopback for the tests that need one.

``postgres_server`` starts one server per test session from Debian's ``postgresql`` binaries
(``make test-system`` installs them), in a temporary folder, listening on 127.0.0.1 on a free
port only, with trust authentication; it is stopped and deleted at the end. PostgreSQL refuses
to run as root, so under root the server runs as the ``postgres`` system user. Tests skip, with
the reason, where the binaries or the psycopg2 driver are missing. ``postgres_url`` gives each
test a fresh, empty database on that server.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def _postgres_bindir() -> Path | None:
    """The newest installed PostgreSQL server's bin folder, or None."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
    )
    for folder in reversed(candidates):
        if all(Path(folder, tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class PostgresServer:
    """A running test server: connect as ``user`` on ``host``:``port`` without a password."""

    host: str
    port: int
    user: str

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL for one of the server's databases."""
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its URL."""
        import psycopg2

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for this test session, on 127.0.0.1 only."""
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed: pip install -e '.[test]'")
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found; install Debian's postgresql "
            "package (make test-system does)"
        )
    as_root = os.geteuid() == 0
    if as_root:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as")
    # /tmp rather than pytest's own folder, which only root may enter.
    base = Path(tempfile.mkdtemp(prefix="lba-pg-"))
    data, sockets, logfile = base / "data", base / "socket", base / "server.log"
    sockets.mkdir()
    if as_root:
        for path in (base, sockets):
            os.chown(path, account.pw_uid, account.pw_gid)

    def run(*argv: str) -> subprocess.CompletedProcess:
        command = ["runuser", "-u", "postgres", "--", *argv] if as_root else list(argv)
        return subprocess.run(
            command, check=False, capture_output=True, text=True, timeout=120, cwd=base
        )

    user, port = "lba", _free_port()
    done = run(str(bindir / "initdb"), "-D", str(data), "-U", user, "--auth=trust",
               "-E", "UTF8", "--no-sync")  # fmt: skip
    if done.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"initdb failed: {done.stderr.strip()}")
    options = (
        f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sockets} "
        "-c fsync=off -c max_connections=50"
    )
    done = run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(logfile), "-o", options,
               "-w", "-t", "60", "start")  # fmt: skip
    if done.returncode != 0:
        log = logfile.read_text() if logfile.exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"the PostgreSQL server did not start: {done.stderr.strip()}\n{log}")
    try:
        yield PostgresServer("127.0.0.1", port, user)
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh, empty database on the session's server."""
    return postgres_server.create_database()
