"""What the test servers share: ``with`` starts and closes them, a log file to read and
wait on, a subprocess to watch while it starts, and polling against a deadline."""

from __future__ import annotations

import shutil
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str | Callable[[], str],
    *,
    interval: float = 0.05,
    abort: Callable[[], bool] | None = None,
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something true;
    return that.

    Raises TimeoutError with the message ``what`` once ``timeout`` seconds have passed,
    or as soon as ``abort()`` is true (the process waited for has exited, say). A
    callable ``what`` is called only then, so the message can show the latest state.
    """
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if (abort is not None and abort()) or time.monotonic() >= deadline:
            raise TimeoutError(what() if callable(what) else what)
        time.sleep(interval)
    return result


class Service(ABC):
    """A server a test starts and stops; ``with`` starts it and closes it.

    ``start()`` returns the service, started (at once if it is already running);
    ``stop()`` stops it and may be called again; ``close()`` stops it for good and
    removes ``root``, the service's own temp directory, if it has one.
    """

    root: Path | None = None

    @abstractmethod
    def start(self) -> Self: ...

    @abstractmethod
    def stop(self) -> object: ...

    def close(self) -> None:
        """Stop for good, removing ``root`` if the service has one."""
        self.stop()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class LoggingService(Service):
    """A service that writes a log file (``log_path``) tests read and wait on."""

    log_path: Path
    #: What error messages call the log.
    log_name = "log"

    def log(self) -> str:
        """Everything in the log so far ("" while there is no file)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_log(self, needle: str, timeout: float = 10.0) -> str:
        """Wait until ``needle`` appears in the log; return the log."""
        wait_until(
            lambda: needle in self.log(),
            timeout,
            lambda: f"{needle!r} not in {self.log_name} after {timeout}s:\n{self.log()}",
        )
        return self.log()


class ProcessService(LoggingService):
    """A server run as one subprocess (``_proc``), ready once it answers."""

    start_timeout: float
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _wait_ready(
        self, ready: Callable[[], bool], failure: Callable[[], Exception], interval: float
    ) -> None:
        """Wait until ``ready()``. If the process exits first or ``start_timeout``
        passes, stop it and raise ``failure()`` (made after the stop, so that a message
        quoting the log has all of it)."""
        try:
            wait_until(
                ready,
                self.start_timeout,
                "not ready",
                interval=interval,
                abort=lambda: not self.running,
            )
        except TimeoutError:
            self.stop()
            raise failure() from None

    def _terminate(self, signum: int, timeout: float) -> None:
        """Send ``signum`` and wait up to ``timeout`` for the exit; SIGKILL if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signum)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
