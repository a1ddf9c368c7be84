"""A throw-away Postgres server for the tests: `initdb` + `pg_ctl` in a temporary folder, on a port of
its own (127.0.0.1, trust auth), stopped and deleted afterwards.

    reason = unavailable()          # None, or why no server can be started here (the caller skips)
    with postgres_server() as pg:   # PostgresServer: pg.url, pg.ctl("restart", "immediate"), pg.sql(...)
        ...

Used by tests/test_faults.py (a server restarted under repository writes) and tests/test_multinode.py
(the repository of a two-node cluster).
"""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.s3 import free_port


def postgres_bindir() -> str | None:
    """The folder of initdb and pg_ctl: on PATH, else the newest /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return os.path.dirname(os.path.realpath(found))
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: [int(p) for p in d.split("/")[-2].split(".")
                                                                        if p.isdigit()])
    return next((d for d in reversed(dirs) if os.path.exists(f"{d}/initdb") and os.path.exists(f"{d}/pg_ctl")), None)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def server_user() -> str | None:
    """Who runs the server: ourselves, or as root the `postgres` user (or `nobody`): Postgres refuses root."""
    if os.geteuid() != 0:
        return None
    return next((u for u in ("postgres", "nobody") if _has_user(u)), None)


def unavailable() -> str | None:
    """Why no server can be started on this host, or None when one can."""
    if postgres_bindir() is None:
        return ("no Postgres binaries on this host (initdb and pg_ctl: neither on PATH nor in "
                "/usr/lib/postgresql/*/bin); install PostgreSQL to run this test")
    if os.geteuid() == 0 and server_user() is None:
        return "running as root and no 'postgres' or 'nobody' user to run the Postgres server as"
    return None


@dataclass
class PostgresServer:
    """A throw-away Postgres cluster in a temporary folder, on a port of its own (127.0.0.1, trust auth).
    As root, the server runs as the `postgres` user (or `nobody`): Postgres refuses to run as root."""
    bindir: str
    root: str
    port: int
    user: str | None  # run the binaries as this user (None: as ourselves)

    @property
    def data(self) -> str:
        return f"{self.root}/data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://docray@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120) -> str:
        cmd = [f"{self.bindir}/{args[0]}", *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if r.returncode:
            log = Path(self.root, "server.log")
            raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr[-2000:]}\n"
                               f"{log.read_text()[-2000:] if log.exists() else ''}")
        return r.stdout

    def init(self) -> None:
        self._run("initdb", "-D", self.data, "-U", "docray", "--auth=trust", "-E", "UTF8", "--no-sync")
        Path(self.data, "postgresql.conf").open("a").write(
            f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.root}'\n"
            "fsync = off\nmax_connections = 40\n")  # fsync off: the tests crash the server, never the machine

    def ctl(self, action: str, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-l", f"{self.root}/server.log", "-w", "-t", "60", "-m", mode, action)

    def sql(self, statement: str) -> str:
        return self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "docray", "-d", "postgres", "-Atqc",
                         statement)


@contextlib.contextmanager
def postgres_server():
    """A started server (see `unavailable` first); stopped (immediate) and its folder deleted afterwards."""
    reason = unavailable()
    if reason:
        raise RuntimeError(reason)
    user = server_user()
    root = tempfile.mkdtemp(prefix="docray-pg-")  # not pytest's tmp_path: the server's user must reach it
    if user:
        pw = pwd.getpwnam(user)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    server = PostgresServer(postgres_bindir(), root, free_port(), user)
    try:
        server.init()
        server.ctl("start")
        yield server
    finally:
        try:
            server.ctl("stop", "immediate")
        except Exception:  # noqa: BLE001 -- already stopped, or never started
            pass
        shutil.rmtree(root, ignore_errors=True)
