"""A throw-away MariaDB server on 127.0.0.1, for the directory's SQL source tests.

Never the system's server: ``mariadb-install-db`` into a temp directory, a free port,
the unix socket, pid file and log in that directory, and everything removed by
``close()``. When the tests run as root, mariadbd drops to the ``mysql`` user itself
(``--user``). Durability is off (no binlog, no doublewrite, lazy flushes): tests need
speed, not crash safety.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pymysql

from tests.support.ports import free_port, start_on_a_free_port, wait_for_tcp
from tests.support.service import ProcessService


class MariaDBError(RuntimeError):
    """The server did not start; the message carries its log."""


def find_mariadbd() -> Path | None:
    """The server binary (Debian's mariadb-server), or None."""
    for candidate in ("/usr/sbin/mariadbd", "/usr/sbin/mysqld"):
        if Path(candidate).exists():
            return Path(candidate)
    found = shutil.which("mariadbd")
    return Path(found) if found else None


class MariaDBServer(ProcessService):
    """One private MariaDB; ``new_database()`` gives each test a clean database."""

    root: Path
    log_name = "mariadb log"

    def __init__(self, *, run_as: str = "mysql", start_timeout: float = 60.0) -> None:
        binary = find_mariadbd()
        if binary is None:
            raise MariaDBError("mariadbd not found (apt install mariadb-server)")
        self.binary = binary
        self.port = free_port()
        self.host = "127.0.0.1"
        self.user = "root"
        self.start_timeout = start_timeout
        self.root = Path(tempfile.mkdtemp(prefix="sw-mariadb-"))
        self.data_dir = self.root / "data"
        self.log_path = self.root / "mariadb.log"
        self._run_as = run_as if os.geteuid() == 0 else None
        self._names = itertools.count(1)

    def _prepare(self) -> None:
        self.log_path.touch()
        if self._run_as is not None:
            account = pwd.getpwnam(self._run_as)
            for path in (self.root, self.log_path):
                os.chown(path, account.pw_uid, account.pw_gid)
        install = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
        argv = [
            install, "--no-defaults", f"--datadir={self.data_dir}",
            "--auth-root-authentication-method=normal", "--skip-test-db",
            "--skip-name-resolve",
        ]  # fmt: skip
        if self._run_as is not None:
            argv.append(f"--user={self._run_as}")
        proc = subprocess.run(argv, capture_output=True, cwd=self.root, check=False)
        if proc.returncode != 0:
            raise MariaDBError(
                f"mariadb-install-db failed:\n{proc.stdout.decode()}{proc.stderr.decode()}"
            )

    def start(self) -> MariaDBServer:
        """Install the system tables (first time) and start; return once it answers.
        A port taken between choosing and binding it is chosen again."""
        return start_on_a_free_port(self, self._start, MariaDBError)

    def _start(self) -> MariaDBServer:
        if self.running:
            return self
        if not self.data_dir.exists():
            self._prepare()
        argv = [
            str(self.binary), "--no-defaults", f"--datadir={self.data_dir}",
            f"--port={self.port}", f"--bind-address={self.host}",
            f"--socket={self.root / 'mariadb.sock'}", f"--pid-file={self.root / 'mariadb.pid'}",
            f"--log-error={self.log_path}", f"--tmpdir={self.root}", "--skip-name-resolve",
            "--skip-log-bin", "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M",
            "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0",
            "--character-set-server=utf8mb4",
        ]  # fmt: skip
        if self._run_as is not None:
            argv.append(f"--user={self._run_as}")
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.root,
        )
        self._wait_ready(
            self._accepts,
            lambda: MariaDBError(f"mariadbd on port {self.port} did not start:\n{self.log()}"),
            interval=0.1,
        )
        return self

    def _accepts(self) -> bool:
        if not wait_for_tcp(self.host, self.port, 0.2):
            return False
        try:
            self.connect().close()
        except pymysql.MySQLError:
            return False
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM: a normal shutdown."""
        self._terminate(signal.SIGTERM, timeout)

    def connect(self, database: str | None = None) -> pymysql.connections.Connection:  # type: ignore[type-arg]
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password="",
            database=database,
            connect_timeout=5,
            autocommit=True,
            charset="utf8mb4",
        )

    def execute(self, sql: str, database: str | None = None) -> None:
        """Run statements (separated by ';' at line ends) as the server's root."""
        connection = self.connect(database)
        try:
            with connection.cursor() as cursor:
                for statement in (s.strip() for s in sql.split(";\n")):
                    if statement:
                        cursor.execute(statement)
        finally:
            connection.close()

    def new_database(self, prefix: str = "sw_test") -> str:
        """Create an empty database; returns its name."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        self.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f"DROP DATABASE IF EXISTS `{name}`")

    def url(self, database: str, user: str = "root", password: str = "") -> str:
        secret = f":{password}" if password else ""
        return f"mysql://{user}{secret}@{self.host}:{self.port}/{database}"

    def __repr__(self) -> str:
        return f"<MariaDBServer 127.0.0.1:{self.port} running={self.running}>"
