"""What the private Sendmail and Exim share: the Debian packages unpacked by
``scripts/fetch-private-mtas.sh`` and a private mount + UTS namespace to run them in.

Debian's sendmail-bin and exim4 conflict with the installed postfix, so they are never
installed. Their unpacked trees live under ``$SENDWARDEN_MTA_CACHE`` (default
``/var/cache/sendwarden-tests``); each instance runs inside ``unshare --mount --uts``
with its own host name and bind mounts (hosts, nsswitch.conf, ...) so that nothing on
the host changes. The network namespace is shared: tests reach them on loopback ports.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.support.service import LoggingService, wait_until

CACHE = Path(os.environ.get("SENDWARDEN_MTA_CACHE", "/var/cache/sendwarden-tests"))
FETCH_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fetch-private-mtas.sh"


class PrivateMtaError(RuntimeError):
    """A private MTA cannot run here; the message says why and what to do."""


def unpacked_root(name: str) -> Path:
    """The unpacked Debian tree of ``name`` ("sendmail" or "exim"), fetched if missing."""
    root = CACHE / name
    if not (root / ".complete").exists():
        result = subprocess.run(
            [str(FETCH_SCRIPT)], capture_output=True, text=True, timeout=600, check=False
        )
        if result.returncode != 0 or not (root / ".complete").exists():
            raise PrivateMtaError(
                f"no private {name} under {root}: {FETCH_SCRIPT} failed "
                f"(exit {result.returncode}):\n{result.stdout}{result.stderr}"
            )
    return root / "root"


@functools.cache
def namespace_problem() -> str | None:
    """Why this machine cannot create the private mount+UTS namespace, or None."""
    try:
        result = subprocess.run(
            ["unshare", "--mount", "--uts", "--fork", "true"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unshare failed: {error}"
    if result.returncode != 0:
        return f"unshare --mount --uts failed (exit {result.returncode}): {result.stderr.strip()}"
    return None


def require_namespaces() -> None:
    """Fail loudly (never skip) where private MTAs cannot run."""
    problem = namespace_problem()
    if problem is not None:
        raise PrivateMtaError(
            "this machine cannot create the private mount/UTS namespace the Sendmail and "
            f"Exim suites run in (run them as root on Linux): {problem}"
        )


def write_namespace_script(
    path: Path, *, hostname: str, setup: Sequence[str], env: dict[str, str] | None = None
) -> Path:
    """A script that runs its arguments inside a fresh private namespace: host name set,
    ``setup`` shell lines (bind/overlay mounts) run first, then ``exec "$@"``."""
    inner = "\n".join([f"hostname {shlex.quote(hostname)}", *setup, 'exec "$@"'])
    exports = "".join(f"export {key}={shlex.quote(value)}\n" for key, value in (env or {}).items())
    path.write_text(
        "#!/bin/sh\nset -e\n"
        + exports
        + f'exec unshare --mount --uts --fork sh -ec {shlex.quote(inner)} sh "$@"\n'
    )
    path.chmod(0o755)
    return path


class PidFileDaemon(LoggingService):
    """An MTA daemon that detaches and names itself in ``pid_file``."""

    pid_file: Path

    def pid(self) -> int | None:
        """The daemon's pid while it runs, else None."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        return pid

    def stop(self) -> None:
        """SIGTERM, up to 10 s to go, then SIGKILL."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: self.pid() is None, 10, f"{self!r} did not stop")
        if self.pid() is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
