"""What the private Sendmail and Exim share: the Debian packages unpacked by
``scripts/fetch-private-mtas.sh`` and a private mount + UTS namespace to run them in.

Debian's sendmail-bin and exim4 conflict with the installed postfix, so they are never
installed. Their unpacked trees live under ``$SENDWARDEN_MTA_CACHE`` (default
``/var/cache/sendwarden-tests``); each instance runs inside ``unshare --mount --uts``
with its own host name and bind mounts (hosts, nsswitch.conf, ...) so that nothing on
the host changes. The network namespace is shared: tests reach them on loopback ports.
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

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
