"""``sendwarden check-config -c FILE [--as-user USER]``: validate a config, naming the
bad key; warn about settings that run but are likely mistakes.

``--as-user`` checks the way the service will see it: the same check runs again as
that user (the config and DKIM key files must be readable by it, the SQLite ledger's
directory and the milter socket's directory writable), because a check as root
passes files the service user cannot open.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

from sendwarden.cli import add_command
from sendwarden.config import ConfigError, Settings, config_warnings, load_settings
from sendwarden.consent.store import parse_database_url
from sendwarden.directory.explain import open_directory
from sendwarden.directory.sources import SourceError
from sendwarden.policy.accounts import is_listed

SERVICE_CHECKS = "--service-checks"


def register(subparsers: Any) -> None:
    parser = add_command(
        subparsers,
        "check-config",
        run,
        config=True,
        help="validate a config file; exits non-zero naming the bad key",
    )
    parser.add_argument(
        "--as-user",
        metavar="USER[:GROUP]",
        help="check as the service user (e.g. postfix:sendwarden, the units' User= and "
        "Group=): files it cannot read or write are errors (needs root, or to be that user)",
    )
    parser.add_argument(
        "--skip-directory",
        action="store_true",
        help="do not read the [directory] sources (a service's start: the milter reads them "
        "itself, refuses to start on a bad one, and starts at once on a kept directory)",
    )
    parser.add_argument(SERVICE_CHECKS, action="store_true", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    if args.as_user:
        return _run_as(args.as_user, args.config)
    settings = load_settings(args.config)  # ConfigError -> one line, exit 2 (cli.main)
    if args.service_checks:
        _check_service_files(settings)
    accounts = f"{len(settings.accounts)} accounts"
    if settings.directory.has_sources and args.skip_directory:
        accounts += " (the directory's sources not read)"
    elif settings.directory.has_sources:
        # The sources are read as the milter would read them: a bad line is named here.
        try:
            with open_directory(settings) as directory:
                snapshot = directory.snapshot
                counts = snapshot.counts() if snapshot is not None else {}
                conflicts = snapshot.conflicts() if snapshot is not None else []
                for token in settings.api.tokens:  # an account the sources may know
                    if token.account and not is_listed(directory.accounts.get(token.account)):
                        raise ConfigError(
                            f"api.tokens[{token.name}].account",
                            f"no account with id {token.account!r} in the config or the directory",
                        )
        except SourceError as error:
            raise ConfigError("directory", str(error)) from None
        accounts = (
            f"{len(settings.accounts)} accounts in the config; the directory has "
            f"{counts.get('accounts', 0)} accounts, {counts.get('domains', 0)} domains, "
            f"{counts.get('logins', 0)} logins, {counts.get('uids', 0)} uids"
        )
        for conflict in conflicts:
            print(f"directory conflict: {conflict}")
    for warning in config_warnings(settings):
        print(f"sendwarden: warning: {warning}", file=sys.stderr)
    print(f"{args.config}: OK ({accounts}, milter socket {settings.milter.socket})")
    return 0


def _run_as(spec: str, config: str) -> int:
    """The same check in a child process running as ``USER[:GROUP]`` (the user's groups,
    and GROUP as the primary group, as the systemd units' User= and Group= give it)."""
    user, _, group = spec.partition(":")
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError("", f"--as-user: no user {user!r} on this host") from None
    gid = account.pw_gid
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError("", f"--as-user: no group {group!r} on this host") from None
    if os.geteuid() not in (0, account.pw_uid):
        raise ConfigError("", f"--as-user {spec}: needs root (or run it as {user})")
    argv = [sys.executable, "-m", "sendwarden", "check-config", "-c"]
    argv += [os.path.abspath(config), SERVICE_CHECKS]
    result = subprocess.run(
        argv,
        user=account.pw_uid,
        group=gid,
        extra_groups=os.getgrouplist(user, gid),
        cwd="/",
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
        capture_output=True,
        text=True,
        check=False,
    )
    sys.stdout.write(result.stdout.replace(": OK (", f": OK as user {spec} (", 1))
    sys.stderr.write(result.stderr.replace("config error: ", f"config error (as {spec}): ", 1))
    return result.returncode


def _check_service_files(settings: Settings) -> None:
    """What the service itself must be able to write, checked as the user running this.
    Directories that do not exist yet (systemd creates RuntimeDirectory= and
    StateDirectory= at start) are not errors."""
    dialect, target = parse_database_url(settings.consent.database)
    if dialect == "sqlite" and target != ":memory:":
        _writable("consent.database", Path(target))
    password_file = settings.alerts.smtp_password_file
    if password_file and not os.access(password_file, os.R_OK):
        raise ConfigError("alerts.smtp_password_file", f"this user cannot read {password_file}")
    scheme, _, rest = settings.milter.socket.partition(":")
    if scheme in ("unix", "local"):
        _writable("milter.socket", Path(rest), socket=True)


def _writable(key: str, path: Path, *, socket: bool = False) -> None:
    if path.exists() and not socket and not os.access(path, os.R_OK | os.W_OK):
        raise ConfigError(key, f"{path} exists but this user cannot read and write it")
    directory = path.parent
    if directory.is_dir() and not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(key, f"this user cannot create files in {directory}")
