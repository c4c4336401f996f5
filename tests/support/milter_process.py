"""Run a milter (sendwarden's, by default) as a subprocess for end-to-end tests.

The contract with sendwarden: ``python -m sendwarden milter -c CONFIG`` runs in the
foreground, listens on the config's ``[milter] socket`` and exits on SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.service import ProcessService, wait_until


class MilterStartError(RuntimeError):
    """The milter exited or never listened; the message carries its output."""


@dataclass(frozen=True)
class MilterSocket:
    """A parsed libmilter socket spec: ``unix:/path``, ``local:/path``, ``inet:port@host``."""

    family: str  # "unix" or "inet" or "inet6"
    path: str | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, spec: str) -> MilterSocket:
        kind, sep, rest = spec.partition(":")
        if not sep:  # a bare path
            return cls("unix", path=spec)
        if kind in ("unix", "local"):
            return cls("unix", path=rest)
        if kind in ("inet", "inet6"):
            port, _, host = rest.partition("@")
            default_host = "::1" if kind == "inet6" else "127.0.0.1"
            return cls(kind, host=host or default_host, port=int(port))
        raise ValueError(f"unsupported milter socket {spec!r}")

    def accepts(self) -> bool:
        """True if something accepts connections on it right now."""
        try:
            if self.family == "unix":
                assert self.path is not None
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(1.0)
                    sock.connect(self.path)
            else:
                with socket.create_connection((self.host, self.port), timeout=1.0):
                    pass
        except OSError:
            return False
        return True


def socket_from_config(config_path: str | os.PathLike[str]) -> str:
    """The ``[milter] socket`` value of a sendwarden TOML config."""
    with open(config_path, "rb") as f:
        config = tomllib.load(f)
    try:
        value = config["milter"]["socket"]
    except KeyError as exc:
        raise ValueError(f"{config_path}: no [milter] socket") from exc
    if not isinstance(value, str):
        raise ValueError(f"{config_path}: [milter] socket must be a string")
    return value


class MilterProcess(ProcessService):
    """A milter subprocess with its output captured to a file.

    Parameters:
        config_path: sendwarden config; the socket is read from it unless ``socket``
            is given, and the default command is ``sendwarden milter -c config_path``.
        argv: another command to run instead (e.g. ``noop_milter.command(...)``).
        socket: the milter socket spec, if not taken from the config.
        socket_mode: chmod a unix socket to this once it listens. The milter runs as
            root and Postfix's smtpd as user ``postfix``, which needs write permission
            on the socket to connect; None leaves it to the milter.
    """

    log_name = "milter output"

    def __init__(
        self,
        config_path: str | os.PathLike[str] | None = None,
        *,
        argv: Sequence[str] | None = None,
        socket: str | None = None,
        log_path: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        start_timeout: float = 20.0,
        socket_mode: int | None = 0o666,
    ) -> None:
        if argv is None:
            if config_path is None:
                raise ValueError("MilterProcess needs config_path or argv")
            argv = [sys.executable, "-m", "sendwarden", "milter", "-c", str(config_path)]
        if socket is None:
            if config_path is None:
                raise ValueError("MilterProcess needs socket when there is no config")
            socket = socket_from_config(config_path)
        self.config_path = Path(config_path) if config_path is not None else None
        self.argv = list(argv)
        self.socket_spec = socket
        self.socket = MilterSocket.parse(socket)
        if log_path is None:
            base = self.config_path.parent if self.config_path else Path(tempfile.gettempdir())
            log_path = base / f"milter-{os.getpid()}-{id(self):x}.log"
        self.log_path = Path(log_path)
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.cwd = cwd
        self.start_timeout = start_timeout
        self.socket_mode = socket_mode
        self.returncode: int | None = None

    def start(self) -> MilterProcess:
        """Start the milter; return once its socket accepts connections."""
        if self.running:
            return self
        if self.socket.family == "unix" and self.socket.path:
            # A stale socket from a crashed run would look "ready" to nobody; remove it.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket.path)
        self.returncode = None
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # its own group: stop() can reap helpers too
            )
        try:
            wait_until(
                self.socket.accepts,
                self.start_timeout,
                "not listening",
                interval=0.02,
                abort=lambda: not self.running,
            )
        except TimeoutError:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                self.returncode = code
                raise MilterStartError(
                    f"milter exited with {code} before listening on {self.socket_spec}\n"
                    f"argv: {self.argv}\n--- output ---\n{self.log()}"
                ) from None
            self.stop()
            raise MilterStartError(
                f"milter not listening on {self.socket_spec} after {self.start_timeout}s"
                f"\nargv: {self.argv}\n--- output ---\n{self.log()}"
            ) from None
        if self.socket.family == "unix" and self.socket_mode is not None:
            assert self.socket.path is not None
            os.chmod(self.socket.path, self.socket_mode)
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL its process group; exit status.

        The SIGKILL also reaches anything the milter left in its process group.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return self.returncode
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            # libmilter's listener notices the stop flag only when its select() returns,
            # which it does every 5 s or on a new connection: poke the socket so a test
            # does not wait 5 s for every milter it stops.
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(0.05)
                    break
                self.socket.accepts()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers in its group, and itself
        proc.wait()
        self.returncode = proc.returncode
        return self.returncode

    def __repr__(self) -> str:
        return f"<MilterProcess pid={self.pid} socket={self.socket_spec}>"
