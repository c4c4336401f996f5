"""A private Sendmail 8.17 (Debian's, unpacked) for end-to-end tests.

The shared recipe (``../shared/recipes/README.md``) made reusable: the MTA runs from the
unpacked tree in a private mount+UTS namespace (host name ``mta.sendwarden.test``, a
hosts file with both 127.0.0.1 and ::1, ``hosts: files``: without them Sendmail sleeps
60 s looking up its own name), with its sasldb bind-mounted over ``/usr/lib/sasl2``
(Sendmail scrubs ``SASL_CONF_PATH``). Everything it relays, and every DSN, goes to one
SMTP sink.

Two daemons listen on loopback: ``MTA`` (SMTP clients, AUTH offered) and ``Local``, the
one the MSP (``sendmail -C submit.cf``, as ``/usr/sbin/sendmail`` is on a Sendmail host)
hands local submissions to. ``sendmail()`` runs the MSP as a given uid with the MSP's
group as supplementary group, which is what the set-gid ``smmsp`` binary gives a user.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.ports import free_port, wait_for_tcp
from tests.support.private_mta import (
    PidFileDaemon,
    require_namespaces,
    unpacked_root,
    write_namespace_script,
)

HOSTNAME = "mta.sendwarden.test"
#: The MSP's RunAsUser (Debian: smmsp). Root's submissions reach the MTA as this uid.
MSP_UID = 65533
MSP_GID = 65534  # nogroup: plays the smmsp group the MSP binary is set-gid to
LOCAL_DAEMON = "Local"
DEPLOY_MC = Path(__file__).resolve().parents[2] / "deploy" / "sendmail.mc"
DEPLOY_SOCKET = "S=inet:8890@127.0.0.1"
MTA_DAEMON = "MTA"


class SendmailError(RuntimeError):
    """Sendmail failed to build its config or to start; the message says how."""


class PrivateSendmail(PidFileDaemon):
    """One private Sendmail: SMTP on 127.0.0.1:``smtp_port``, relaying to a sink.

    Parameters:
        sink_port: the SMTP sink receiving every delivery (relayed mail and DSNs).
        milter: a libmilter socket spec (``unix:/path``, ``inet:port@host``) or None.
        sasl_users: ``{login: password}``; a login ``user@realm`` is stored in that realm.
    """

    log_name = "sendmail log"

    def __init__(
        self,
        *,
        sink_port: int,
        milter: str | None = None,
        sasl_users: Mapping[str, str] | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        require_namespaces()
        self.tree = unpacked_root("sendmail")
        self.sink_port = sink_port
        self.milter = milter
        self.sasl_users = dict(sasl_users or {})
        self.start_timeout = start_timeout
        self.smtp_port = free_port()
        self.local_port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="sw-sm-"))
        self.root.chmod(0o755)
        self.etc = self.root / "etc"
        self.run_dir = self.root / "run"
        self.pid_file = self.run_dir / "sendmail.pid"
        self.log_path = self.root / "transcript.log"  # Sendmail logs to syslog: none here
        self.ns = self.root / "ns.sh"
        self._configured = False

    # ------------------------------------------------------------------ set-up

    def mc(self) -> str:
        """The MTA's .mc: the recipe's, with deploy/sendmail.mc's milter lines."""
        cf = self.tree / "usr/share/sendmail/cf"
        milter = ""
        if self.milter is not None:
            # deploy/sendmail.mc as shipped, with this test's milter socket.
            shipped = DEPLOY_MC.read_text()
            assert DEPLOY_SOCKET in shipped, f"{DEPLOY_MC} no longer names {DEPLOY_SOCKET}"
            milter = shipped.replace(DEPLOY_SOCKET, f"S={self.milter}")
        return f"""divert(-1)
dnl Private Sendmail MTA for sendwarden's e2e tests. Loopback only.
divert(0)dnl
include(`{cf}/m4/cf.m4')dnl
VERSIONID(`sendwarden-test')dnl
OSTYPE(`linux')dnl
define(`confDOMAIN_NAME', `{HOSTNAME}')dnl
define(`confSERVICE_SWITCH_FILE', `{self.etc}/service.switch')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
define(`QUEUE_DIR', `{self.run_dir}/mqueue')dnl
define(`confPID_FILE', `{self.run_dir}/sendmail.pid')dnl
define(`STATUS_FILE', `{self.run_dir}/statistics')dnl
undefine(`ALIAS_FILE')dnl
define(`HELP_FILE', `{self.tree}/etc/mail/helpfile')dnl
define(`confTO_IDENT', `0')dnl
define(`confTO_CONNECT', `5s')dnl
define(`confLOG_LEVEL', `9')dnl
define(`confPRIVACY_FLAGS', `goaway')dnl
FEATURE(`nocanonify')dnl
FEATURE(`accept_unresolvable_domains')dnl
FEATURE(`no_default_msa')dnl
DAEMON_OPTIONS(`Port={self.smtp_port}, Addr=127.0.0.1, Name={MTA_DAEMON}')dnl
DAEMON_OPTIONS(`Port={self.local_port}, Addr=127.0.0.1, Name={LOCAL_DAEMON}')dnl
define(`confAUTH_MECHANISMS', `PLAIN LOGIN')dnl
TRUST_AUTH_MECH(`PLAIN LOGIN')dnl
define(`confAUTH_REALM', `{HOSTNAME}')dnl
define(`SMART_HOST', `[127.0.0.1]')dnl
define(`RELAY_MAILER_ARGS', `TCP $h {self.sink_port}')dnl
define(`ESMTP_MAILER_ARGS', `TCP $h {self.sink_port}')dnl
define(`LOCAL_MAILER_PATH', `[IPC]')dnl
define(`LOCAL_MAILER_FLAGS', `lmDFMuXkw5')dnl
define(`LOCAL_MAILER_ARGS', `TCP 127.0.0.1 {self.sink_port}')dnl
define(`LOCAL_MAILER_DSN_DIAGNOSTIC_CODE', `SMTP')dnl
{milter}MAILER(`local')dnl
MAILER(`smtp')dnl
"""

    def submit_mc(self) -> str:
        """The MSP's .mc (``submit.cf``): queue in clientmqueue, hand over to ``Local``."""
        cf = self.tree / "usr/share/sendmail/cf"
        return f"""divert(-1)
dnl Private Sendmail MSP for sendwarden's e2e tests.
divert(0)dnl
include(`{cf}/m4/cf.m4')dnl
VERSIONID(`sendwarden-test-msp')dnl
OSTYPE(`linux')dnl
define(`confDOMAIN_NAME', `{HOSTNAME}')dnl
define(`confSERVICE_SWITCH_FILE', `{self.etc}/service.switch')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
define(`confRUN_AS_USER', `{MSP_UID}:{MSP_GID}')dnl
define(`confTO_IDENT', `0')dnl
define(`STATUS_FILE', `{self.run_dir}/submit.stat')dnl
define(`confPID_FILE', `{self.run_dir}/submit.pid')dnl
define(`RELAY_MAILER_ARGS', `TCP $h {self.local_port}')dnl
FEATURE(`msp', `[127.0.0.1]')dnl
define(`QUEUE_DIR', `{self.run_dir}/clientmqueue')dnl
"""

    def configure(self) -> None:
        if self._configured:
            return
        for directory in (self.etc, self.run_dir, self.etc / "sasl"):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o755)
        (self.run_dir / "mqueue").mkdir(mode=0o700, exist_ok=True)
        client_queue = self.run_dir / "clientmqueue"
        client_queue.mkdir(exist_ok=True)
        os.chown(client_queue, MSP_UID, MSP_GID)
        client_queue.chmod(0o770)
        (self.etc / "hosts").write_text(
            f"127.0.0.1 {HOSTNAME} localhost\n::1 {HOSTNAME} localhost ip6-localhost\n"
        )
        (self.etc / "nsswitch.conf").write_text(
            "passwd: files\ngroup: files\nshadow: files\nhosts: files\n"
        )
        (self.etc / "service.switch").write_text("hosts files\naliases files\n")
        self._write_sasl()
        m4 = str(self.tree / "usr/bin/m4")
        for name, text in (("sendmail", self.mc()), ("submit", self.submit_mc())):
            (self.etc / f"{name}.mc").write_text(text)
            built = subprocess.run(
                [m4, str(self.etc / f"{name}.mc")], capture_output=True, text=True, check=False
            )
            if built.returncode != 0:
                raise SendmailError(f"m4 {name}.mc failed: {built.stderr}")
            (self.etc / f"{name}.cf").write_text(built.stdout)
            (self.etc / f"{name}.cf").chmod(0o644)
        write_namespace_script(
            self.ns,
            hostname=HOSTNAME,
            setup=[
                f"mount --bind {self.etc}/hosts /etc/hosts",
                f"mount --bind {self.etc}/nsswitch.conf /etc/nsswitch.conf",
                f"mount --bind {self.etc}/sasl /usr/lib/sasl2",
            ],
            env={"LD_LIBRARY_PATH": str(self.tree / "usr/lib/x86_64-linux-gnu")},
        )
        self._configured = True

    def _write_sasl(self) -> None:
        sasl = self.etc / "sasl"
        (sasl / "Sendmail.conf").write_text(
            f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nsasldb_path: {sasl}/sasldb2\n"
            "mech_list: PLAIN LOGIN\n"
        )
        for login, password in self.sasl_users.items():
            user, _, realm = login.partition("@")
            subprocess.run(
                ["saslpasswd2", "-p", "-c", "-f", str(sasl / "sasldb2"),
                 "-a", "Sendmail", "-u", realm or HOSTNAME, user],
                input=password, text=True, check=True, capture_output=True,
            )  # fmt: skip

    # ------------------------------------------------------------------ run

    @property
    def binary(self) -> str:
        return str(self.tree / "usr/libexec/sendmail/sendmail")

    def start(self) -> PrivateSendmail:
        self.configure()
        if self.pid() is not None:
            return self
        result = subprocess.run(
            [str(self.ns), self.binary, "-C", str(self.etc / "sendmail.cf"), "-bd", "-q15m"],
            capture_output=True, text=True, timeout=self.start_timeout, check=False,
        )  # fmt: skip
        with self.log_path.open("a") as log:
            log.write(f"start: exit {result.returncode}\n{result.stdout}{result.stderr}\n")
        if result.returncode != 0 or not wait_for_tcp("127.0.0.1", self.smtp_port, 10):
            self.stop()
            raise SendmailError(f"sendmail did not start:\n{self.log()}")
        return self

    def sendmail(
        self,
        message: bytes,
        sender: str | None,
        recipients: Sequence[str],
        uid: int = 65534,
        *,
        args: Sequence[str] = ("-i",),
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[bytes]:
        """Submit like a local program: the MSP (``sendmail -C submit.cf``) run as ``uid``
        with the MSP's group, the way the set-gid binary runs for a user."""
        argv = [str(self.ns), "setpriv", f"--reuid={uid}", f"--regid={uid if uid else 0}",
                f"--groups={MSP_GID}", "--",
                self.binary, "-C", str(self.etc / "submit.cf"), *args]  # fmt: skip
        if uid == 0:
            argv = [str(self.ns), self.binary, "-C", str(self.etc / "submit.cf"), *args]
        if sender is not None:
            argv += ["-f", sender]
        argv += ["--", *recipients]
        started = time.monotonic()
        result = subprocess.run(
            argv, input=message, capture_output=True, timeout=timeout, check=False, cwd="/"
        )
        with self.log_path.open("a") as log:
            log.write(
                f"msp as uid {uid} ({time.monotonic() - started:.2f}s): exit "
                f"{result.returncode}\n{result.stdout.decode(errors='replace')}"
                f"{result.stderr.decode(errors='replace')}\n"
            )
        return result

    def __repr__(self) -> str:
        return f"<PrivateSendmail {self.root} smtp=127.0.0.1:{self.smtp_port}>"
