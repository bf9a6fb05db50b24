"""A private, throwaway PostgreSQL server for the test session.

Uses ``ARBITER_TEST_POSTGRES_URL`` when set (an existing server the tests may create
databases on). Otherwise it runs ``initdb`` and ``pg_ctl`` from the installed
PostgreSQL server into a temporary directory and listens on 127.0.0.1 only. As root
it runs them as the ``postgres`` user, because initdb refuses to run as root.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg


class PostgresUnavailable(RuntimeError):
    pass


def _bin_dir() -> Path:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (initdb) found; install the Debian package "
        "'postgresql' or set ARBITER_TEST_POSTGRES_URL"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One server; :meth:`new_database` hands out fresh, empty databases."""

    def __init__(self) -> None:
        self.admin_url: str = ""
        self.version: str = ""
        self._tmp: str | None = None
        self._run_as: list[str] = []
        self._bin: Path | None = None
        self._data: Path | None = None
        self._options: str = ""

    def start(self) -> None:
        external = os.environ.get("ARBITER_TEST_POSTGRES_URL")
        if external:
            self.admin_url = external
        else:
            self._start_private()
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            self.version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]

    def _start_private(self) -> None:
        self._bin = _bin_dir()
        self._tmp = tempfile.mkdtemp(prefix="arbiter-pg-")
        self._data = Path(self._tmp) / "data"
        sockets = Path(self._tmp) / "sock"
        sockets.mkdir()
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    "running as root and there is no 'postgres' user"
                ) from None
            for path in (Path(self._tmp), sockets):
                os.chown(path, user.pw_uid, user.pw_gid)
            self._run_as = ["runuser", "-u", "postgres", "--"]
        port = _free_port()
        self._pg(
            "initdb",
            "-D",
            str(self._data),
            "-A",
            "trust",
            "-U",
            "arbiter",
            "-E",
            "UTF8",
            "--no-sync",
        )
        self._options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self.start_cluster()
        self.admin_url = f"postgresql://arbiter@127.0.0.1:{port}/postgres"

    @property
    def can_restart(self) -> bool:
        """Whether this session runs the server itself (not ARBITER_TEST_POSTGRES_URL),
        so that tests may stop and start it."""
        return self._data is not None

    def start_cluster(self) -> None:
        """Start the private cluster (again): same data directory, same port, so every
        database and URL handed out before is back."""
        assert self._data is not None and self._tmp is not None, "not a private server"
        self._pg(
            "pg_ctl",
            "-D",
            str(self._data),
            "-o",
            self._options,
            "-l",
            str(Path(self._tmp) / "log"),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop_cluster(self) -> None:
        """Stop the private cluster as an operator would (``pg_ctl stop -m fast``: open
        sessions are ended, committed data kept); :meth:`start_cluster` brings it back."""
        assert self._data is not None, "not a private server"
        self._pg("pg_ctl", "-D", str(self._data), "-m", "fast", "-w", "-t", "60", "stop")

    def _pg(self, tool: str, *args: str) -> None:
        assert self._bin is not None
        result = subprocess.run(
            [*self._run_as, str(self._bin / tool), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            log = Path(self._tmp or "/nonexistent") / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise PostgresUnavailable(
                f"{tool} failed ({result.returncode}): {result.stderr.strip()}\n{tail}"
            )

    def new_database(self) -> str:
        """A fresh empty database; returns its SQLAlchemy URL (psycopg 3 driver)."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        base = self.admin_url.rsplit("/", 1)[0]
        return base.replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self._data is not None:
            with contextlib.suppress(PostgresUnavailable):
                self._pg("pg_ctl", "-D", str(self._data), "-m", "immediate", "-w", "stop")
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
