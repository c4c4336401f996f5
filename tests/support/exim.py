"""A private Exim 4.96 (Debian's exim4-daemon-heavy, unpacked) for end-to-end tests.

The shared recipe (``../shared/recipes/README.md``) made reusable. Exim is set-uid root
and re-execs itself for delivery, which drops ``LD_LIBRARY_PATH`` and forbids ``-C``: so
it runs in a private mount+UTS namespace where read-only overlays put the unpacked
libraries and binaries over ``/usr/lib`` and ``/usr/sbin`` and a private ``/etc``
(passwd with the compiled-in ``Debian-exim`` user, hosts, ``hosts: files``,
``exim4/exim4.conf``) over ``/etc``. Inside, Exim behaves as if installed:
``/usr/sbin/sendmail`` is Exim's.

The configuration is sendwarden's Exim wiring (deploy/exim/): outbound mail is routed
to the proxy, which logs in with the shared secret and gets the sender's identity as a
forced ``AUTH=``; the proxy relays what passes back to the return port, where only the
proxy's login is accepted; from there (and for local domains) mail goes to the sink.
Exim itself refuses nothing else, so a refusal a test sees comes from sendwarden.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.ports import free_port, wait_for_tcp
from tests.support.private_mta import (
    PidFileDaemon,
    require_namespaces,
    unpacked_root,
    write_namespace_script,
)

HOSTNAME = "exim.sendwarden.test"
EXIM_UID = 65521  # Debian-exim inside the namespace (unused on the host)
EXIM_GID = 65521
UNLISTED_UID = 65533  # "webuser" in the namespace's passwd
PROXY_LOGIN = "exim"  # how Exim logs in to the proxy
RETURN_LOGIN = "sendwarden"  # how the proxy logs in to Exim's return port
REPO = Path(__file__).resolve().parents[2]


class EximError(RuntimeError):
    """Exim failed to start or a command failed; the message carries its logs."""


class PrivateExim(PidFileDaemon):
    """One private Exim: SMTP on 127.0.0.1:``smtp_port``, the return port for the proxy
    on ``return_port``, outbound mail routed to the proxy on ``proxy_port``."""

    log_name = "exim mainlog"

    def __init__(
        self,
        *,
        sink_port: int,
        proxy_port: int,
        secret: str,
        policy_port: int = 0,
        sasl_users: Mapping[str, str] | None = None,
        local_domains: Sequence[str] = ("hosting.example",),
        use_proxy: bool = True,
        start_timeout: float = 20.0,
    ) -> None:
        require_namespaces()
        self.tree = unpacked_root("exim")
        self.sink_port = sink_port
        self.proxy_port = proxy_port
        self.policy_port = policy_port  # the proxy's ${readsocket} policy socket
        self.secret = secret
        self.sasl_users = dict(sasl_users or {})
        self.local_domains = tuple(local_domains)
        self.use_proxy = use_proxy  # False: Exim alone, straight to the sink (benchmarks)
        self.start_timeout = start_timeout
        self.smtp_port = free_port()
        self.return_port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="sw-ex-"))
        self.root.chmod(0o755)
        self.etc = self.root / "etc"
        self.spool = self.root / "spool"
        self.pid_file = self.root / "run/exim.pid"
        self.log_path = self.root / "log" / "mainlog"
        self.ns = self.root / "ns.sh"
        self._configured = False

    def config(self) -> str:
        """exim4.conf: the test frame around deploy/exim's sendwarden pieces."""
        main = (REPO / "deploy/exim/conf.d/main/00_sendwarden").read_text()
        macros = {
            "SENDWARDEN_PROXY_PORT": str(self.proxy_port),
            "SENDWARDEN_RETURN_PORT": str(self.return_port),
            "SENDWARDEN_SECRET_FILE": "/etc/exim4/sendwarden.secret",
            "SENDWARDEN_POLICY_PORT": str(self.policy_port),
            # deploy/exim's own definition: the identity as tested is the one shipped.
            "SENDWARDEN_IDENTITY": next(
                line.partition("=")[2].strip()
                for line in main.splitlines()
                if line.startswith("SENDWARDEN_IDENTITY")
            ),
        }
        domains = " : ".join((HOSTNAME, *self.local_domains))
        return f"""# Private Exim for sendwarden's e2e tests (inside the test namespace).
{chr(10).join(f"{name} = {value}" for name, value in macros.items())}
primary_hostname = {HOSTNAME}
spool_directory = {self.spool}
log_file_path = {self.root}/log/%slog
pid_file_path = {self.pid_file}
keep_environment =
tls_advertise_hosts =
daemon_smtp_ports = {self.smtp_port} : {self.return_port}
local_interfaces = <; 127.0.0.1
rfc1413_hosts =
host_lookup =
domainlist local_domains = {domains}
acl_smtp_mail = acl_sendwarden_mail
acl_smtp_rcpt = {"acl_sendwarden_rcpt" if self.use_proxy else "acl_check_rcpt"}
log_selector = +received_recipients +smtp_connection +incoming_port +outgoing_port \\
  +deliver_time +sender_on_delivery +return_path_on_delivery
message_size_limit = 100M
# PHP mail() -f and sendmail -f by any user, as on cPanel: a claim sendwarden judges.
untrusted_set_sender = *
# Exim would add "Sender: user@primary_hostname" to local mail From another address;
# sendwarden judges Sender like From (docs/exim.md).
local_from_check = false
dsn_advertise_hosts = *
queue_run_max = 0
# Every message comes back through the return port: room for both (Exim's default is 20).
smtp_accept_max = 200

begin acl
.include {self.etc}/exim4/acl_mail_sendwarden
acl_check_mail:
  accept
acl_check_rcpt:
  # The tests' Exim refuses nothing else: the policy under test is sendwarden's.
  accept

begin routers
{".include " + str(self.etc) + "/exim4/routers_sendwarden" if self.use_proxy else ""}
local_to_sink:
  driver = manualroute
  domains = +local_domains
  route_list = * 127.0.0.1
  transport = to_sink
  self = send
  no_more
to_sink:
  driver = manualroute
  domains = ! +local_domains
  route_list = * 127.0.0.1
  transport = to_sink
  self = send
  no_more

begin transports
.include {self.etc}/exim4/transports_sendwarden
to_sink:
  driver = smtp
  port = {self.sink_port}
  allow_localhost
  hosts_avoid_tls = *

begin retry
*   *   F,2h,15m

begin authenticators
.include {self.etc}/exim4/authenticators_sendwarden
customers:
  driver = plaintext
  public_name = PLAIN
  server_prompts = :
  server_advertise_condition = ${{if !eq{{$received_port}}{{SENDWARDEN_RETURN_PORT}}}}
  server_condition = ${{if and{{ {{!eq{{$auth2}}{{}}}} \\
      {{eq{{$auth3}}{{${{lookup{{$auth2}}lsearch{{/etc/exim4/passwords}}}}}}}} }}}}
  server_set_id = $auth2
"""

    def configure(self) -> None:
        if self._configured:
            return
        for directory in (self.etc / "exim4", self.root / "run", self.root / "log", self.spool):
            directory.mkdir(parents=True, exist_ok=True)
        for directory in (self.root / "log", self.spool, self.root / "run"):
            os.chown(directory, EXIM_UID, EXIM_GID)
            directory.chmod(0o750)
        passwd = Path("/etc/passwd").read_text()
        group = Path("/etc/group").read_text()
        (self.etc / "passwd").write_text(
            passwd + f"Debian-exim:x:{EXIM_UID}:{EXIM_GID}::{self.spool}:/usr/sbin/nologin\n"
            # A hosting user no account lists (Exim needs a name for every caller).
            f"webuser:x:{UNLISTED_UID}:{UNLISTED_UID}::/nonexistent:/usr/sbin/nologin\n"
        )
        (self.etc / "group").write_text(
            group + f"Debian-exim:x:{EXIM_GID}:\nwebuser:x:{UNLISTED_UID}:\n"
        )
        (self.etc / "hosts").write_text(
            f"127.0.0.1 {HOSTNAME} localhost\n::1 {HOSTNAME} localhost ip6-localhost\n"
        )
        (self.etc / "nsswitch.conf").write_text(
            "passwd: files\ngroup: files\nshadow: files\nhosts: files\n"
        )
        exim4 = self.etc / "exim4"
        deploy = REPO / "deploy/exim/conf.d"
        for source, name in (
            ("acl/25_sendwarden", "acl_mail_sendwarden"),
            ("router/150_sendwarden_proxy", "routers_sendwarden"),
            ("transport/30_sendwarden_proxy", "transports_sendwarden"),
            ("auth/25_sendwarden", "authenticators_sendwarden"),
        ):
            (exim4 / name).write_text((deploy / source).read_text())
        (exim4 / "exim4.conf").write_text(self.config())
        secret = exim4 / "sendwarden.secret"
        secret.write_text(self.secret + "\n")
        os.chown(secret, 0, EXIM_GID)
        secret.chmod(0o640)
        passwords = exim4 / "passwords"
        passwords.write_text("".join(f"{u}: {p}\n" for u, p in self.sasl_users.items()))
        os.chown(passwords, 0, EXIM_GID)
        passwords.chmod(0o640)
        write_namespace_script(
            self.ns,
            hostname=HOSTNAME,
            setup=[
                f"mount -t overlay overlay -o lowerdir={self.etc}:/etc /etc",
                f"mount -t overlay overlay -o lowerdir={self.tree}/usr/lib:/usr/lib /usr/lib",
                f"mount -t overlay overlay -o lowerdir={self.tree}/usr/sbin:/usr/sbin /usr/sbin",
            ],
        )
        self._configured = True

    def run(self, *argv: str, input: bytes | None = None, uid: int | None = None,
            timeout: float = 60.0) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
        """A command inside the namespace (as ``uid`` when given)."""
        command = [str(self.ns)]
        if uid is not None:
            command += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
        return subprocess.run([*command, *argv], input=input, capture_output=True,
                              timeout=timeout, check=False, cwd="/")  # fmt: skip

    def start(self) -> PrivateExim:
        self.configure()
        if self.pid() is not None:
            return self
        checked = self.run("/usr/sbin/exim4", "-bV")
        if checked.returncode != 0:
            raise EximError(
                f"exim4 -bV failed:\n{checked.stdout.decode()}{checked.stderr.decode()}"
            )
        started = self.run("/usr/sbin/exim4", "-bd")
        if started.returncode != 0 or not wait_for_tcp("127.0.0.1", self.smtp_port, 10):
            self.stop()
            raise EximError(f"exim did not start: {started.stderr.decode()}\n{self.logs()}")
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
        """Submit like a local program (PHP ``mail()``): Exim's sendmail as ``uid``."""
        argv = ["/usr/sbin/sendmail", *args]
        if sender is not None:
            argv += ["-f", sender]
        return self.run(*argv, "--", *recipients, input=message, uid=uid, timeout=timeout)

    def queue_count(self) -> int:
        result = self.run("/usr/sbin/exim4", "-bpc")
        return int(result.stdout.decode().strip() or 0)

    def run_queue(self) -> None:
        """Deliver everything queued now (``exim -qff``), waiting for it."""
        self.run("/usr/sbin/exim4", "-qff")

    def logs(self) -> str:
        parts = []
        for name in ("mainlog", "rejectlog", "paniclog"):
            path = self.root / "log" / name
            if path.exists():
                parts.append(f"--- {name} ---\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    def log(self) -> str:
        return self.logs()

    def __repr__(self) -> str:
        return f"<PrivateExim {self.root} smtp=127.0.0.1:{self.smtp_port}>"
