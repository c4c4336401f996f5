"""The whole end-to-end rig: Redis, SMTP sink, a milter, and a private Postfix using it.

Started in dependency order (Redis, sink, milter, Postfix) on a caller's ExitStack, which
stops them in reverse order however the test ends.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import smtplib
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from tests.support import noop_milter
from tests.support.exim import PrivateExim
from tests.support.milter_process import MilterProcess
from tests.support.ports import free_port
from tests.support.postfix import PrivatePostfix
from tests.support.redis_server import RedisServer
from tests.support.sendmail import LOCAL_DAEMON as SENDMAIL_LOCAL_DAEMON
from tests.support.sendmail import PrivateSendmail
from tests.support.sendwarden_config import (
    DEFAULT_LOCAL_DOMAINS,
    DEFAULT_SASL_USERS,
    write_config,
)
from tests.support.sink import SmtpSink

REPO = Path(__file__).resolve().parents[2]
MilterKind = Literal["sendwarden", "noop", "none", "proxy", "noop-proxy"]
MtaKind = Literal["postfix", "sendmail", "exim"]
#: The shared secret of the Exim rigs' proxy and Exim (tests only).
PROXY_SECRET = "sendwarden-test-proxy-secret"
#: How the proxy logs in to Postfix's reinjection smtpd (a SASL user with the secret).
POSTFIX_REINJECT_LOGIN = "sendwarden@proxy.invalid"


class Mta(Protocol):
    """What a rig needs of its MTA (PrivatePostfix, PrivateSendmail)."""

    smtp_port: int

    def sendmail(
        self, message: bytes, sender: str | None, recipients: Sequence[str], uid: int = ...,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[bytes]: ...  # fmt: skip

    def log(self) -> str: ...

    def start(self) -> Any: ...

    def close(self) -> None: ...


@dataclass
class Rig:
    """Handles on every part of a running rig, plus the two ways to submit mail."""

    dir: Path
    sink: SmtpSink
    mta: Mta
    milter: MilterProcess | None
    redis: RedisServer | None
    config_path: Path | None
    milter_socket: str
    sasl_users: dict[str, str] = field(default_factory=dict)
    events_path: Path | None = None

    @property
    def postfix(self) -> PrivatePostfix:
        """The MTA, for tests that use Postfix's own tools (queue files, postsuper)."""
        assert isinstance(self.mta, PrivatePostfix), f"this rig runs {self.mta!r}"
        return self.mta

    def smtp(
        self,
        login: str | None = None,
        password: str | None = None,
        *,
        helo: str = "client.example",
        timeout: float = 30.0,
        source: str | None = None,
    ) -> smtplib.SMTP:
        """An smtplib client connected (EHLO done) to Postfix, logged in if ``login``.

        The password defaults to the one the rig gave that SASL user. ``source`` is the
        client's loopback address (e.g. "127.0.0.2", to be a different client than
        127.0.0.1). Use it as a context manager so the connection is closed.
        """
        client = smtplib.SMTP("127.0.0.1", self.mta.smtp_port, local_hostname=helo,
                              timeout=timeout,
                              source_address=(source, 0) if source else None)  # fmt: skip
        try:
            client.ehlo(helo)
            if login is not None:
                client.login(login, password if password is not None else self.sasl_users[login])
        except BaseException:
            client.close()
            raise
        return client

    def sendmail(
        self,
        message: bytes,
        sender: str | None,
        recipients: Sequence[str],
        uid: int = 65534,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[bytes]:
        """Local submission with sendmail(1) as ``uid``; see PrivatePostfix.sendmail."""
        return self.mta.sendmail(message, sender, recipients, uid, **kwargs)

    def decisions(self) -> list[dict[str, Any]]:
        """The sendwarden milter's JSON decision lines so far."""
        if self.milter is None:
            return []
        lines = [line for line in self.milter.log().splitlines() if line.startswith("{")]
        return [record for record in map(json.loads, lines) if record.get("event") == "decision"]

    def command(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``sendwarden ARGS -c CONFIG`` on the rig's config (e.g. ``"report", "--json"``)."""
        assert self.config_path is not None, "only a sendwarden rig has a config"
        return subprocess.run(
            [sys.executable, "-m", "sendwarden", *args, "-c", str(self.config_path)],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def events(self) -> list[dict[str, Any]]:
        """The no-op milter's recorded callbacks (empty for other milters)."""
        return noop_milter.read_events(self.events_path) if self.events_path else []

    def report(self, tail: int = 60) -> str:
        """Tails of every log, for a failing test's output."""
        parts = [f"=== rig {self.dir}"]
        if self.milter is not None:
            parts += ["--- milter output ---", _tail(self.milter.log(), tail)]
        parts += [f"--- {type(self.mta).__name__} log ---", _tail(self.mta.log(), tail)]
        if self.redis is not None:
            parts += ["--- redis log ---", _tail(self.redis.log(), 10)]
        return "\n".join(parts)


def _with_milter_settings(
    extra: Mapping[str, Mapping[str, Any]] | None, settings: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    merged = {table: dict(values) for table, values in (extra or {}).items()}
    for key, value in settings.items():
        merged.setdefault("milter", {}).setdefault(key, value)
    return merged


def _merged(
    base: Mapping[str, Mapping[str, Any]], extra: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, dict[str, Any]]:
    """Config tables of ``base`` with ``extra``'s keys over them, table by table."""
    merged = {table: dict(values) for table, values in base.items()}
    for table, values in (extra or {}).items():
        merged.setdefault(table, {}).update(values)
    return merged


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def start_rig(
    stack: contextlib.ExitStack,
    *,
    milter: MilterKind = "sendwarden",
    accounts: Sequence[Mapping[str, Any]] | None = None,
    policy: Mapping[str, Any] | None = None,
    consent: Mapping[str, Any] | None = None,
    config_extra: Mapping[str, Mapping[str, Any]] | None = None,
    local_domains: Sequence[str] = DEFAULT_LOCAL_DOMAINS,
    sasl_users: Mapping[str, str] | None = None,
    verdicts: Sequence[noop_milter.Verdict] = (),
    postfix_main_cf: Mapping[str, str] | None = None,
    with_redis: bool | None = None,
    milter_env: Mapping[str, str] | None = None,
    milter_socket: Literal["unix", "inet"] = "unix",
    mta: MtaKind = "postfix",
    chroot: bool = False,
    socket_in_queue: bool | None = None,
) -> Rig:
    """Start Redis, sink, milter and Postfix; every stop is registered on ``stack``.

    ``milter``: "sendwarden" runs ``python -m sendwarden milter -c CONFIG`` on a config
    written from ``accounts``/``policy``/``consent``/``config_extra``; "noop" runs the
    recording no-op milter (with ``verdicts``); "none" configures Postfix without one.
    Redis is started for sendwarden only, unless ``with_redis`` says otherwise.
    "noop-proxy" (Exim only) runs loadtest/noop_proxy.py, the benchmark's baseline, as
    the proxy Exim routes outbound mail through.
    ``chroot``: Postfix runs with Debian's default chroot flags, and the milter socket is
    set up as deploy/postfix-main.cf says: inside the queue directory, named
    ``unix:sendwarden/milter.sock`` (no SASL users: the sasldb would be outside the chroot).
    ``socket_in_queue`` (default: as ``chroot``): that socket set-up, chrooted or not.
    """
    if milter == "noop-proxy" and mta != "exim":
        raise ValueError("the no-op proxy stands in for sendwarden proxy on Exim's path only")
    if socket_in_queue is None:
        socket_in_queue = chroot
    users = dict(DEFAULT_SASL_USERS if sasl_users is None else sasl_users)
    rig_dir = Path(tempfile.mkdtemp(prefix="sw-e2e-"))
    # Postfix (user postfix) must reach the milter socket in here; the milter runs as root.
    rig_dir.chmod(0o755)
    stack.callback(shutil.rmtree, rig_dir, True)
    socket_spec = (
        f"unix:{rig_dir / 'milter.sock'}"
        if milter_socket == "unix"
        else f"inet:{free_port()}@127.0.0.1"
    )

    redis: RedisServer | None = None
    if with_redis if with_redis is not None else milter in ("sendwarden", "proxy"):
        redis = RedisServer()
        stack.callback(redis.close)
        redis.start()

    sink = SmtpSink()
    stack.callback(sink.stop)
    sink.start()

    # Built (not started) first: the milter config names Postfix's queue directory, where
    # sendwarden reads the uid of sendmail(1) submissions, or Sendmail's local daemon.
    mta_instance: Mta
    proxy_port = free_port()
    if mta == "exim":
        (rig_dir / "proxy.secret").write_text(PROXY_SECRET + "\n")
        policy_port = free_port()
        mta_instance = PrivateExim(
            sink_port=sink.port,
            proxy_port=proxy_port,
            policy_port=policy_port,
            secret=PROXY_SECRET,
            sasl_users=users,
            local_domains=local_domains,
            use_proxy=milter != "none",
        )
        mta_settings: dict[str, Any] = {}
        proxy_settings = {
            "proxy": {
                "listen": f"127.0.0.1:{proxy_port}",
                "next_hop": f"127.0.0.1:{mta_instance.return_port}",
                "secret_file": str(rig_dir / "proxy.secret"),
                "policy_listen": f"127.0.0.1:{policy_port}",
            }
        }
        config_extra = _merged(proxy_settings, config_extra)
    elif mta == "sendmail":
        mta_instance = PrivateSendmail(
            sink_port=sink.port,
            milter=socket_spec if milter != "none" else None,
            sasl_users=users,
        )
        mta_settings = {"peer_uid_daemons": [SENDMAIL_LOCAL_DAEMON]}
    else:
        proxy_socket = rig_dir / "proxy.sock"
        postfix_users = (
            {**users, POSTFIX_REINJECT_LOGIN: PROXY_SECRET} if milter == "proxy" else users
        )
        mta_instance = PrivatePostfix(
            sink_port=sink.port,
            milter=socket_spec if milter not in ("none", "proxy") else None,
            local_domains=local_domains,
            sasl_users={} if chroot else postfix_users,
            main_cf=postfix_main_cf,
            chroot=chroot,
            proxy_filter=f"unix:{proxy_socket}" if milter == "proxy" else None,
        )
        mta_settings = {"postfix_queue_directory": str(mta_instance.queue_dir)}
        if socket_in_queue:  # as deploy/postfix-main.cf says: inside the queue directory
            socket_spec = f"unix:{mta_instance.queue_dir / 'sendwarden' / 'milter.sock'}"
            mta_instance.milter = "unix:sendwarden/milter.sock" if milter != "none" else None
        if milter == "proxy":  # sendwarden proxy as Postfix's smtpd_proxy_filter
            (rig_dir / "proxy.secret").write_text(PROXY_SECRET + "\n")
            proxy_settings = {
                "proxy": {
                    "listen": f"unix:{proxy_socket}",
                    "next_hop": f"127.0.0.1:{mta_instance.reinject_port}",
                    "mta": "postfix",
                    "secret_file": str(rig_dir / "proxy.secret"),
                    "next_hop_login": POSTFIX_REINJECT_LOGIN,
                }
            }
            config_extra = _merged(proxy_settings, config_extra)
    stack.callback(mta_instance.close)

    process: MilterProcess | None = None
    config_path: Path | None = None
    events_path: Path | None = None
    if milter in ("sendwarden", "proxy"):
        config_path = write_config(
            rig_dir / "sendwarden.toml",
            socket=socket_spec,
            redis_url=redis.url if redis else "redis://127.0.0.1:1/0",
            accounts=accounts,
            policy=policy,
            consent=consent,
            local_domains=local_domains,
            extra=_with_milter_settings(config_extra, mta_settings),
        )
        if mta == "exim" or milter == "proxy":  # the SMTP policy proxy instead of the milter
            process = MilterProcess(
                argv=[sys.executable, "-m", "sendwarden", "proxy", "-c", str(config_path)],
                socket=f"inet:{proxy_port}@127.0.0.1"
                if mta == "exim"
                else f"unix:{rig_dir / 'proxy.sock'}",
                log_path=rig_dir / "milter.log",
                env=milter_env,
            )
        else:
            process = MilterProcess(config_path, log_path=rig_dir / "milter.log", env=milter_env)
    elif milter == "noop-proxy" and mta == "exim":  # the benchmark's baseline proxy
        argv = [
            sys.executable, "-m", "loadtest.noop_proxy",
            "--listen", str(proxy_port), "--next-hop", str(mta_instance.return_port),
            "--secret-file", str(rig_dir / "proxy.secret"),
        ]  # fmt: skip
        process = MilterProcess(
            argv=argv,
            socket=f"inet:{proxy_port}@127.0.0.1",
            log_path=rig_dir / "milter.log",
            cwd=REPO,
        )
    elif milter == "noop":
        events_path = rig_dir / "events.jsonl"
        process = MilterProcess(
            argv=noop_milter.command(socket_spec, events_path, verdicts),
            socket=socket_spec,
            log_path=rig_dir / "milter.log",
            env=milter_env,
        )
    if process is not None:
        stack.callback(process.stop)
        process.start()

    mta_instance.start()

    return Rig(
        dir=rig_dir,
        sink=sink,
        mta=mta_instance,
        milter=process,
        redis=redis,
        config_path=config_path,
        milter_socket=socket_spec,
        sasl_users=users,
        events_path=events_path,
    )


@contextlib.contextmanager
def running_rig(**kwargs: Any) -> Iterator[Rig]:
    """A rig for a whole test module (starting MTAs costs seconds): ``start_rig(**kwargs)``,
    stopped at the end with every part's logs printed."""
    with contextlib.ExitStack() as stack:
        rig = start_rig(stack, **kwargs)
        try:
            yield rig
        finally:
            print(rig.report())
