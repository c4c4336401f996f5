"""A throw-away PostgreSQL server on 127.0.0.1, for integration tests and benchmarks.

Never the system's cluster: ``initdb`` into a temp directory, a free port, the unix
socket in the temp directory, and everything removed by ``close()``. PostgreSQL
refuses to run as root, so when the tests run as root the server runs as the
``postgres`` user (``setpriv``, which execs in place: the pid we hold is the server's).
Durability is switched off (fsync, synchronous_commit): tests need speed, not crash
safety.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg

from tests.support.ports import free_port, start_on_a_free_port, wait_for_tcp
from tests.support.service import ProcessService


class PostgresError(RuntimeError):
    """The server did not start; the message carries its log."""


def find_bindir() -> Path | None:
    """The newest Debian ``/usr/lib/postgresql/N/bin`` holding initdb, or None."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parent.parent.name),
    )
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer(ProcessService):
    """One private PostgreSQL cluster; ``new_database()`` gives each test a clean one."""

    root: Path
    log_name = "postgres log"

    def __init__(
        self,
        *,
        bindir: Path | None = None,
        run_as: str = "postgres",
        start_timeout: float = 60.0,
        durable: bool = False,
    ) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise PostgresError("PostgreSQL server binaries (initdb, postgres) not found")
        self.bindir = found
        self.port = free_port()
        self.host = "127.0.0.1"
        self.user = "postgres"  # the cluster's superuser (initdb -U)
        self.start_timeout = start_timeout
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="sw-pg-"))
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log_path = self.root / "postgres.log"
        self._account = pwd.getpwnam(run_as) if os.geteuid() == 0 else None
        self._names = itertools.count(1)

    # ---------------------------------------------------------------- life cycle

    def _as_server_user(self, argv: list[str]) -> list[str]:
        if self._account is None:
            return argv
        return [
            "setpriv", f"--reuid={self._account.pw_uid}", f"--regid={self._account.pw_gid}",
            "--init-groups", "--", *argv,
        ]  # fmt: skip

    def _prepare(self) -> None:
        self.socket_dir.mkdir(mode=0o700)
        self.log_path.touch()
        if self._account is not None:
            for path in (self.root, self.socket_dir, self.log_path):
                os.chown(path, self._account.pw_uid, self._account.pw_gid)
        initdb = [
            str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", self.user,
            "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync",
        ]  # fmt: skip
        proc = subprocess.run(
            self._as_server_user(initdb),
            capture_output=True,
            cwd=self.root,
            check=False,
        )
        if proc.returncode != 0:
            raise PostgresError(f"initdb failed:\n{proc.stdout.decode()}{proc.stderr.decode()}")

    def start(self) -> PostgresServer:
        """initdb (first time) and start the server; return once it accepts connections.
        A port taken between choosing it and binding it (other test runs share the
        machine) is chosen again."""
        return start_on_a_free_port(self, self._start, PostgresError)

    def _start(self) -> PostgresServer:
        if self.running:
            return self
        if not self.data_dir.exists():
            self._prepare()
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": "100",
            "shared_buffers": "128MB",
            "fsync": "on" if self.durable else "off",
            "synchronous_commit": "on" if self.durable else "off",
            "full_page_writes": "on" if self.durable else "off",
            "logging_collector": "off",
        }
        argv = [str(self.bindir / "postgres"), "-D", str(self.data_dir)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._as_server_user(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )
        self._wait_ready(
            self._accepts,
            lambda: PostgresError(f"postgres on port {self.port} did not start:\n{self.log()}"),
            interval=0.05,
        )
        return self

    def _accepts(self) -> bool:
        if not wait_for_tcp(self.host, self.port, 0.2):
            return False
        try:
            with psycopg.connect(self.url(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self, timeout: float = 20.0) -> None:
        """Fast shutdown (SIGINT: disconnects clients, no waiting for them)."""
        self.resume()
        self._terminate(signal.SIGINT, timeout)

    def _processes(self) -> list[int]:
        """The postmaster and every process it started (backends, workers)."""
        if self._proc is None:
            return []
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
        found, todo = [], [self._proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo += children.get(pid, [])
        return found

    def pause(self) -> None:
        """SIGSTOP the whole server: connections stay open, nothing answers (a hung
        host, a VM paused), and no server-side timeout fires."""
        self._paused = self._processes()
        for pid in self._paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in getattr(self, "_paused", []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._paused = []

    # ---------------------------------------------------------------- databases

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        """Run one statement in the ``postgres`` database, outside a transaction."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql)

    def new_database(self, prefix: str = "sw_test") -> str:
        """Create an empty database; returns its URL."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def new_schema(self, prefix: str = "sw_test") -> str:
        """An empty schema in the ``postgres`` database, first on the URL's search_path:
        as isolated as a new database for sendwarden's tables, and far cheaper to make."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        self._admin(f'CREATE SCHEMA "{name}"')
        return f"{self.url()}?options=-csearch_path%3D{name}"

    def drop_schema(self, url: str) -> None:
        """Drop a schema made by :meth:`new_schema` with everything in it."""
        name = url.rsplit("%3D", 1)[1]
        with contextlib.suppress(psycopg.Error):
            self._admin(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')

    def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`new_database`, disconnecting leftover clients."""
        name = url.rsplit("/", 1)[1]
        with contextlib.suppress(psycopg.Error):
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def __repr__(self) -> str:
        return f"<PostgresServer {self.url()} running={self.running}>"
