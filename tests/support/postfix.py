"""A private Postfix instance for end-to-end tests, in its own temp directory.

Nothing here reads or writes the system's Postfix (``/etc/postfix``, ``/var/spool/postfix``)
or starts it: every path Postfix uses (config, queue, data, log, commands) lives under one
temp directory, and ``postfix -c DIR`` / ``sendmail -C DIR`` point the tools at it.

Postfix itself is deliberately permissive (any client may relay, Postfix rejects nothing):
the milter under test is what must enforce the policy, so a reply a test sees comes from
the milter, not from Postfix. Everything Postfix delivers, for local and remote domains
alike, goes to one SMTP sink.

Local submission with sendmail(1) as a non-root user normally runs the set-gid
``postdrop``, which refuses a non-default config directory unless the *system* main.cf
lists it in ``alternate_config_directories`` -- and the system config is off limits. So the
instance has a private ``command_directory`` holding a plain (not set-gid) copy of
postdrop, and ``sendmail()`` runs the submitting user with ``postdrop`` as a supplementary
group: the same directory permissions a set-gid postdrop gets, without the check. The
queue file is still owned by the submitting uid, which is what Postfix's pickup reports
("from userid N") and what the milter sees.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.ports import connect_within, free_port
from tests.support.service import LoggingService, wait_until

POSTFIX_BIN = "/usr/sbin/postfix"
SYSTEM_COMMAND_DIR = Path("/usr/sbin")
#: Commands linked into the private command_directory (postdrop is copied instead).
LINKED_COMMANDS = (
    "postalias", "postcat", "postconf", "postfix", "postkick", "postlock", "postlog",
    "postmap", "postmulti", "postqueue", "postsuper", "sendmail",
)  # fmt: skip
#: Queue subdirectories holding messages Postfix has not finished with.
PENDING_QUEUES = ("maildrop", "incoming", "active", "deferred")
DEFAULT_MESSAGE_SIZE_LIMIT = 64 * 1024 * 1024
PORT_ATTEMPTS = 3  # a free port another process takes before Postfix binds it: try anew

# name, type, private, unpriv, chroot, wakeup, maxproc, command. chroot is "n" here: the
# milter socket and the sasldb live in the temp dir, outside any chroot. An instance made
# with ``chroot=True`` takes the chroot column from Debian's default master.cf instead.
_MASTER_SERVICES = (
    ("pickup", "unix", "n", "-", "n", "60", "1", "pickup"),
    ("cleanup", "unix", "n", "-", "n", "-", "0", "cleanup"),
    ("qmgr", "unix", "n", "-", "n", "300", "1", "qmgr"),
    ("rewrite", "unix", "-", "-", "n", "-", "-", "trivial-rewrite"),
    ("bounce", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("defer", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("trace", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("verify", "unix", "-", "-", "n", "-", "1", "verify"),
    ("flush", "unix", "n", "-", "n", "1000?", "0", "flush"),
    ("proxymap", "unix", "-", "-", "n", "-", "-", "proxymap"),
    ("proxywrite", "unix", "-", "-", "n", "-", "1", "proxymap"),
    ("smtp", "unix", "-", "-", "n", "-", "-", "smtp"),
    ("relay", "unix", "-", "-", "n", "-", "-", "smtp"),
    ("showq", "unix", "n", "-", "n", "-", "-", "showq"),
    ("error", "unix", "-", "-", "n", "-", "-", "error"),
    ("retry", "unix", "-", "-", "n", "-", "-", "error"),
    ("discard", "unix", "-", "-", "n", "-", "-", "discard"),
    ("local", "unix", "-", "n", "n", "-", "-", "local"),
    ("anvil", "unix", "-", "-", "n", "-", "1", "anvil"),
    ("scache", "unix", "-", "-", "n", "-", "1", "scache"),
    ("postlog", "unix-dgram", "n", "-", "n", "-", "1", "postlogd"),
)


#: Debian's stock master.cf; its chroot column is what a default Debian Postfix runs with.
DEBIAN_MASTER_CF = Path("/usr/share/postfix/master.cf.dist")
#: Files Debian's Postfix start-up copies into the chroot (configure-instance.sh).
CHROOT_FILES = ("localtime", "services", "resolv.conf", "hosts", "host.conf", "nsswitch.conf")


def debian_chroot_flags(master_cf: Path = DEBIAN_MASTER_CF) -> dict[str, str]:
    """``{service name: chroot flag}`` of Debian's default master.cf (smtpd under its
    listener name ``smtp inet``)."""
    flags: dict[str, str] = {}
    for line in master_cf.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 8 and not line[0].isspace() and not line.startswith("#"):
            name = "smtpd" if (fields[0], fields[1]) == ("smtp", "inet") else fields[0]
            flags.setdefault(name, fields[4])
    return flags


class PostfixError(RuntimeError):
    """Postfix failed to start or a command failed; the message carries its log."""


class PrivatePostfix(LoggingService):
    """One private Postfix: SMTP on 127.0.0.1:``smtp_port``, relaying all mail to a sink.

    Parameters:
        sink_port: port of the SMTP sink on 127.0.0.1 that receives every delivery.
        milter: Postfix milter socket (``unix:/path`` or ``inet:127.0.0.1:port``; the
            sendwarden/libmilter spelling ``inet:port@host`` is converted), or None.
            Used for both ``smtpd_milters`` and ``non_smtpd_milters``.
        local_domains: domains Postfix accepts as ``relay_domains``.
        sasl_users: ``{login: password}`` for Cyrus SASL (PLAIN, LOGIN) via a sasldb.
            A login ``user@realm`` is stored as user ``user`` in realm ``realm``; a bare
            login in the default realm (``myhostname``).
        main_cf: extra or overriding main.cf parameters.
        chroot: run the services chrooted as Debian's default master.cf does (smtpd,
            pickup, cleanup, ... in the queue directory); the milter socket must then be
            inside the queue directory. SASL logins need a sasldb inside the chroot,
            which this instance does not set up: use it without ``sasl_users``.
        sasldb: a sasldb another instance already wrote (its ``sasldb_path``), used
            instead of writing one from ``sasl_users`` (one saslpasswd2 run per user:
            slow for the benchmark's thousand accounts and several instances).
    """

    root: Path
    log_name = "maillog"

    def __init__(
        self,
        *,
        sink_port: int,
        milter: str | None = None,
        local_domains: Sequence[str] = ("hosting.example",),
        sasl_users: Mapping[str, str] | None = None,
        smtp_port: int | None = None,
        myhostname: str = "mta.sendwarden.test",
        message_size_limit: int = DEFAULT_MESSAGE_SIZE_LIMIT,
        main_cf: Mapping[str, str] | None = None,
        proxy_filter: str | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = 30.0,
        chroot: bool = False,
        sasldb: Path | None = None,
    ) -> None:
        self.chroot = chroot
        self.sink_port = sink_port
        self.milter = milter
        self.local_domains = tuple(local_domains)
        self.sasl_users = dict(sasl_users or {})
        self.smtp_port: int = smtp_port if smtp_port is not None else free_port()
        self._port_chosen_here = smtp_port is None  # may be replaced if another takes it
        self.myhostname = myhostname
        self.message_size_limit = message_size_limit
        self.extra_main_cf = dict(main_cf or {})
        # A before-queue proxy (smtpd_proxy_filter) and the smtpd it hands mail back to.
        self.proxy_filter = proxy_filter
        self.reinject_port: int = free_port() if proxy_filter else 0
        self.start_timeout = start_timeout

        self.root = Path(tempfile.mkdtemp(prefix="sw-pf-", dir=base_dir))
        # Postfix's unprivileged processes and sendmail's submitting user must traverse it.
        self.root.chmod(0o755)
        self.config_dir = self.root / "etc"
        self.queue_dir = self.root / "queue"
        self.data_dir = self.root / "data"
        self.command_dir = self.root / "bin"
        # Debian's Cyrus looks for smtpd.conf in $config_directory/sasl and ignores
        # cyrus_sasl_config_path (measured with strace); both point here.
        self.sasl_dir = self.config_dir / "sasl"
        self.log_dir = self.root / "log"
        self.log_path = self.log_dir / "maillog"
        self.sasldb_path = sasldb or self.sasl_dir / "sasldb2"
        self._own_sasldb = sasldb is None
        self._configured = False
        self._master_pid: int | None = None

    # ------------------------------------------------------------------ set-up

    @property
    def sendmail_path(self) -> Path:
        return self.command_dir / "sendmail"

    def main_cf(self) -> dict[str, str]:
        """The main.cf parameters this instance runs with."""
        nexthop = f"[127.0.0.1]:{self.sink_port}"
        params: dict[str, str] = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "command_directory": str(self.command_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.log_dir),
            "myhostname": self.myhostname,
            "mydomain": "sendwarden.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "relay_domains": ", ".join(self.local_domains),
            "mynetworks": "127.0.0.1/32",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            # Everything ends at the sink: relay domains, remote domains, bounces.
            "relayhost": nexthop,
            "default_transport": f"smtp:{nexthop}",
            "relay_transport": f"relay:{nexthop}",
            "local_transport": f"smtp:{nexthop}",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "append_dot_mydomain": "no",
            "smtputf8_enable": "yes",
            "message_size_limit": str(self.message_size_limit),
            "mailbox_size_limit": "0",
            # Postfix enforces nothing: the milter's replies are what tests check.
            "smtpd_client_restrictions": "",
            "smtpd_helo_restrictions": "",
            "smtpd_sender_restrictions": "",
            # smtpd refuses to start unless a working reject_unauth_destination (or the
            # like) is listed, and ignores one after "permit"; static:OK permits first.
            "smtpd_relay_restrictions": "check_client_access static:OK, reject_unauth_destination",
            "smtpd_recipient_restrictions": "permit",
            "smtpd_data_restrictions": "",
            "smtpd_error_sleep_time": "0s",
            "smtpd_soft_error_limit": "1000",
            "smtpd_hard_error_limit": "1000",
            "smtpd_tls_security_level": "none",
            "smtp_tls_security_level": "none",
            # Cyrus SASL against a private sasldb.
            "smtpd_sasl_auth_enable": "yes" if self.sasl_users else "no",
            "smtpd_sasl_type": "cyrus",
            "smtpd_sasl_path": "smtpd",
            "cyrus_sasl_config_path": str(self.sasl_dir),
            "smtpd_sasl_security_options": "noanonymous",
            "smtpd_sasl_local_domain": "",
            # The login in smtpd's Received header: how a before-queue proxy learns it.
            "smtpd_sasl_authenticated_header": "yes" if self.proxy_filter else "no",
            # Fast retries so a test that takes the sink down and back needs no minutes.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "5s",
            "smtp_connect_timeout": "5s",
            "milter_default_action": "tempfail",
            "milter_protocol": "6",
        }
        if self.milter:
            sock = postfix_milter_socket(self.milter)
            params["smtpd_milters"] = sock
            params["non_smtpd_milters"] = sock
        params.update(self.extra_main_cf)
        return params

    def master_cf(self) -> str:
        """The master.cf text: SMTP on 127.0.0.1:smtp_port plus the services Postfix needs."""
        smtpd = "smtpd"
        rows = []
        if self.proxy_filter:
            smtpd = f"smtpd -o smtpd_proxy_filter={self.proxy_filter}"
            # As docs/exim.md says: only the proxy's SASL login may hand mail back.
            reinject = (
                "smtpd -o smtpd_proxy_filter= -o smtpd_milters="
                " -o smtpd_sasl_auth_enable=yes"
                " -o smtpd_client_restrictions=permit_sasl_authenticated,reject"
            )
            rows.append((f"127.0.0.1:{self.reinject_port}", "inet", "n", "-", "n", "-", "-",
                         reinject))  # fmt: skip
        rows.insert(0, (f"127.0.0.1:{self.smtp_port}", "inet", "n", "-", "n", "-", "-", smtpd))
        rows.extend(_MASTER_SERVICES)
        if self.chroot:
            flags = debian_chroot_flags()
            rows = [(*row[:4], flags.get(row[7] if row[1] == "inet" else row[0], row[4]), *row[5:])
                    for row in rows]  # fmt: skip
        return "".join("{:<24} {:<10} {} {} {} {:<5} {:<3} {}\n".format(*row) for row in rows)

    def configure(self) -> None:
        """Write config, command, SASL and log directories (idempotent)."""
        if self._configured:
            return
        for directory in (self.config_dir, self.queue_dir, self.command_dir, self.log_dir):
            directory.mkdir(exist_ok=True)
            directory.chmod(0o755)  # explicit: mkdir's mode is masked by the umask
        postfix_pw = pwd.getpwnam("postfix")
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.data_dir, postfix_pw.pw_uid, postfix_pw.pw_gid)

        for name in LINKED_COMMANDS:
            link = self.command_dir / name
            if not link.exists():
                link.symlink_to(SYSTEM_COMMAND_DIR / name)
        postdrop = self.command_dir / "postdrop"
        shutil.copyfile(SYSTEM_COMMAND_DIR / "postdrop", postdrop)
        postdrop.chmod(0o755)  # deliberately not set-gid: see the module docstring

        _write_public(
            self.config_dir / "main.cf",
            "".join(f"{key} = {value}\n" for key, value in self.main_cf().items()),
        )
        _write_public(self.config_dir / "master.cf", self.master_cf())
        if self.chroot:
            chroot_etc = self.queue_dir / "etc"
            chroot_etc.mkdir(exist_ok=True)
            chroot_etc.chmod(0o755)
            for name in CHROOT_FILES:
                if (Path("/etc") / name).is_file():
                    shutil.copyfile(Path("/etc") / name, chroot_etc / name)
                    (chroot_etc / name).chmod(0o644)
        self._write_sasl()
        self._configured = True

    def _write_sasl(self) -> None:
        self.sasl_dir.mkdir(exist_ok=True)
        self.sasl_dir.chmod(0o755)
        sasldb = self.sasldb_path
        _write_public(
            self.sasl_dir / "smtpd.conf",
            "pwcheck_method: auxprop\n"
            "auxprop_plugin: sasldb\n"
            f"sasldb_path: {sasldb}\n"
            "mech_list: PLAIN LOGIN\n",
        )
        for login, password in self.sasl_users.items() if self._own_sasldb else ():
            user, _, realm = login.partition("@")
            proc = subprocess.run(
                ["saslpasswd2", "-p", "-c", "-f", str(sasldb), "-u", realm or self.myhostname,
                 user],
                input=password.encode(),
                capture_output=True,
                check=False,
            )  # fmt: skip
            if proc.returncode != 0:
                raise PostfixError(f"saslpasswd2 failed for {login!r}: {proc.stderr.decode()}")
        if self._own_sasldb and sasldb.exists():
            # smtpd runs as user postfix and must read it.
            os.chown(sasldb, 0, pwd.getpwnam("postfix").pw_gid)
            sasldb.chmod(0o640)

    # ----------------------------------------------------------- start / stop

    def start(self) -> PrivatePostfix:
        """Start the instance; return once its SMTP port accepts connections.

        Postfix reports start-up errors only to its log: they are put into the exception.
        """
        if self.running:
            return self
        self.configure()
        for _ in range(PORT_ATTEMPTS):
            log_before = len(self.log())
            proc = self._run([POSTFIX_BIN, "-c", str(self.config_dir), "start"], check=False)
            lost_port = "Address already in use" in self.log()[log_before:]
            if proc.returncode == 0 or not (lost_port and self._port_chosen_here):
                break
            # free_port() raced another process on this shared machine: take another.
            self.stop()
            self.smtp_port = free_port()
            _write_public(self.config_dir / "master.cf", self.master_cf())
        if proc.returncode != 0:
            self.stop()
            raise PostfixError(
                f"postfix start failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}\n"
                f"--- maillog ---\n{self.log()}"
            )
        self._master_pid = self._read_master_pid()
        # smtpd dies on a bad config only when a client connects: probe once here rather
        # than let a test hang in smtplib. (The milter sees this as one connect + close.)
        greeting = _read_greeting(self.smtp_port, timeout=10.0)
        if not greeting.startswith("220"):
            self.stop()
            raise PostfixError(
                f"postfix smtpd on 127.0.0.1:{self.smtp_port} gave no 220 greeting "
                f"({greeting!r})\n--- maillog ---\n{self.log()}"
            )
        return self

    @property
    def running(self) -> bool:
        pid = self._master_pid
        return pid is not None and pid_alive(pid)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the instance and make sure none of its processes is left.

        Does what ``postfix stop`` does (SIGTERM to master, which takes its children down)
        without that script's one-second sleeps, then kills anything still in master's
        session (master calls setsid(), so the session holds exactly this instance).
        """
        pid = self._master_pid or self._read_master_pid()
        self._master_pid = None
        if pid is None or not self._is_our_master(pid):
            return  # never started, or already gone (a stale pid file names someone else)
        os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not pid_alive(pid), timeout, "master alive", interval=0.02)
        # Children normally exit with master; give them a moment, then force.
        grace = time.monotonic() + 2.0
        give_up = grace + 5.0
        while leftovers := session_members(pid) + ([pid] if pid_alive(pid) else []):
            now = time.monotonic()
            if now >= give_up:
                raise PostfixError(f"postfix processes {leftovers} survive SIGKILL")
            if now >= grace:
                for member in leftovers:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(member, signal.SIGKILL)
            time.sleep(0.02)

    def _is_our_master(self, pid: int) -> bool:
        """True if ``pid`` is a live Postfix master running in this instance's queue dir."""
        if not pid_alive(pid):
            return False
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return False
        return os.path.basename(exe) == "master" and Path(cwd) == self.queue_dir

    # ------------------------------------------------------------ using it

    def kick_pickup(self) -> None:
        """Make pickup scan the maildrop now (it does so by itself only every 60 s, as in
        a default install): e.g. to see a message a non-SMTP milter tempfailed retried."""
        self._run(["postkick", "-c", str(self.config_dir), "public", "pickup", "W"])

    def flush(self) -> None:
        """Ask Postfix to retry deferred mail now (``postqueue -f``)."""
        self._run(["postqueue", "-c", str(self.config_dir), "-f"])

    def queue(self) -> list[dict[str, object]]:
        """The queue as ``postqueue -j`` reports it (one dict per message)."""
        out = self._run(["postqueue", "-c", str(self.config_dir), "-j"]).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def queue_files(self, queues: Sequence[str] = PENDING_QUEUES) -> list[Path]:
        """Queue files in the given queue directories (cheap: no Postfix command)."""
        files: list[Path] = []
        for name in queues:
            directory = self.queue_dir / name
            if directory.is_dir():
                files.extend(p for p in directory.rglob("*") if p.is_file())
        return files

    def wait_queue_empty(self, timeout: float = 10.0) -> None:
        """Wait until no message is waiting or in delivery (held mail does not count)."""

        def still_queued() -> str:
            files = [str(f) for f in self.queue_files()]
            return f"queue not empty after {timeout}s: {files}\n--- maillog ---\n{self.log()}"

        wait_until(lambda: not self.queue_files(), timeout, still_queued)

    def sendmail(
        self,
        message: bytes,
        sender: str | None,
        recipients: Sequence[str],
        uid: int = 65534,
        *,
        args: Sequence[str] = ("-i",),
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[bytes]:
        """Submit like a local program (PHP ``mail()``): this instance's sendmail as ``uid``.

        ``sender`` None leaves ``-f`` out, so Postfix derives it from the uid. The result
        is returned unchecked: tests assert on its exit status and stderr.
        """
        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            gid = uid
        # Not "-C DIR": since Postfix 3.2 sendmail(1) run by a non-root user honours -C
        # only for directories the *system* main.cf authorises. MAIL_CONFIG is honoured
        # for any user, as long as the process is not set-gid.
        argv = [str(self.sendmail_path), *args]
        if sender is not None:
            argv += ["-f", sender]
        argv += ["--", *recipients]
        return subprocess.run(
            argv,
            input=message,
            capture_output=True,
            user=uid,
            group=gid,
            extra_groups=[grp.getgrnam("postdrop").gr_gid],
            env={
                "MAIL_CONFIG": str(self.config_dir),
                "PATH": "/usr/sbin:/usr/bin:/bin",
                "HOME": "/",
                "LANG": "C.UTF-8",
            },
            cwd="/",
            timeout=timeout,
            check=False,
        )

    # ---------------------------------------------------------------- internals

    def _run(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        if argv[0] in LINKED_COMMANDS:
            argv = [str(SYSTEM_COMMAND_DIR / argv[0]), *argv[1:]]
        proc = subprocess.run(
            argv, capture_output=True, text=True, check=False, timeout=self.start_timeout
        )
        if check and proc.returncode != 0:
            raise PostfixError(
                f"{' '.join(argv)} failed (exit {proc.returncode}): {proc.stdout}{proc.stderr}\n"
                f"--- maillog ---\n{self.log()}"
            )
        return proc

    def _read_master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def __repr__(self) -> str:
        return f"<PrivatePostfix {self.root} smtp=127.0.0.1:{self.smtp_port}>"


def postfix_milter_socket(spec: str) -> str:
    """Convert a libmilter socket spec to Postfix's spelling.

    sendwarden's config (like libmilter) writes ``inet:8890@127.0.0.1``; Postfix wants
    ``inet:127.0.0.1:8890``. ``unix:``/``local:`` paths are passed through as ``unix:``.
    """
    kind, _, rest = spec.partition(":")
    if not rest:
        return f"unix:{spec}"
    if kind in ("unix", "local"):
        return f"unix:{rest}"
    if kind in ("inet", "inet6") and "@" in rest:
        port, _, host = rest.partition("@")
        return f"{kind}:{host}:{port}"
    return spec


def _write_public(path: Path, text: str) -> None:
    """Write a root-owned file everyone may read (sendmail runs as an unprivileged uid).

    The mtime is set a minute back: Postfix re-reads a config file modified within the
    last second (sleeping 300 ms each time) in case it is still being written, which made
    a fresh instance take ~2.5 s to start.
    """
    path.write_text(text)
    path.chmod(0o644)
    past = time.time() - 60
    os.utime(path, (past, past))


def _read_greeting(port: int, timeout: float) -> str:
    """The SMTP greeting on 127.0.0.1:port ("" if none), over one connection; QUITs."""
    sock = connect_within("127.0.0.1", port, timeout, socket_timeout=timeout)
    if sock is None:
        return ""
    with sock:
        data = b""
        with contextlib.suppress(OSError):
            while b"\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            sock.sendall(b"QUIT\r\n")
            sock.recv(4096)
        return data.decode(errors="replace")


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


def session_members(sid: int) -> list[int]:
    """Live processes whose session id is ``sid`` (other than ``sid`` itself)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == sid:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        # fields: state ppid pgrp session ...
        if len(fields) > 3 and int(fields[3]) == sid and fields[0] != b"Z":
            members.append(int(entry))
    return members
