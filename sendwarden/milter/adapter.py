"""pymilter callbacks translated into pipeline calls.

Only the steps the active checks need are negotiated, per connection from the
configuration it leased: the header step always (sendmail(1) mail is attributed
by the uid in Postfix's Received header), the body step only when a check reads
the body, no HELO/EOH/unknown steps, and no-reply flags on every step that never
refuses. The DATA step is negotiated, with a reply, on inet sockets only: Postfix
sends the DATA-stage macros even when the step is skipped, nobody answers, and
delayed ACK plus Nagle on Postfix's side stall every message ~40 ms; answering
removes the stall. On a unix socket there is no such stall and the reply would
be one more round trip. Every callback is guarded: an unexpected error becomes a
451 4.3.0 (the client retries, nothing is lost), never a traceback to the MTA.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any, TypeVar

import Milter

from sendwarden import metrics
from sendwarden.addresses import strip_brackets
from sendwarden.milter.generations import Lease
from sendwarden.milter.pickup import submitting_uid
from sendwarden.milter.replies import render
from sendwarden.peeruid import parse_endpoint, socket_owner_uid
from sendwarden.policy.facts import Client, IPAddress, MessageChanges, Transaction
from sendwarden.policy.verdict import Verdict
from sendwarden.session import INTERNAL_ERROR, PolicySession

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# The only macros the checks read: the daemon a client reached (for the socket owner's
# uid, see peer_uid_daemons), the SASL login at MAIL, the queue id (which Postfix's smtpd
# knows only from the second RCPT on, and always at end of message).
MACROS = {
    Milter.M_CONNECT: "j {daemon_name} {daemon_addr} {daemon_port}",
    Milter.M_ENVFROM: "{auth_authen} i",
    Milter.M_ENVRCPT: "i",
    Milter.M_EOM: "i",
}


#: Every protocol bit pymilter may clear or set in negotiation (steps, no-reply
#: flags, and the two opt-in features we leave off).
_STEP_BITS: int = functools.reduce(
    lambda bits, pair: bits | pair[0] | pair[1],
    Milter.OPTIONAL_CALLBACKS.values(),
    Milter.P_RCPT_REJ | Milter.P_HDR_LEADSPC,
)


def protocol_steps(*, needs_body: bool, data_reply: bool) -> int:
    """The skip and no-reply bits this milter asks for (the MTA grants those it offers).

    Computed per connection, never cached on a class: pymilter's ``protocol_mask``
    caches on the class, so a subclass inherits whatever its parent computed first
    (a milter started without body checks and reloaded with them kept skipping the body).
    """
    steps: int = Milter.P_NR_CONN | Milter.P_NOHELO | Milter.P_NOUNKNOWN | Milter.P_NOEOH
    steps |= Milter.P_NR_HDR
    steps |= Milter.P_NR_BODY if needs_body else Milter.P_NOBODY
    if not data_reply:
        steps |= Milter.P_NODATA
    return int(steps)


def negotiate_steps(milter: Milter.Base, opts: list[int], steps: int) -> int:
    """Base.negotiate with explicit ``steps``, and the macro lists set in a way that
    works on Python 3 (pymilter 1.0.5's @symlist passes bytes, fails, and silently
    drops every no-reply and no-callback flag with it). Shared with the benchmark's
    no-op milter, so that it negotiates exactly what sendwarden does."""
    try:
        milter._actions, offered, _, _ = opts
        if milter._actions & Milter.SETSYMLIST:
            for stage, macros in MACROS.items():
                milter._ctx.setsymlist(stage, macros)
        # Keep what the MTA offers outside the step bits (e.g. larger body chunks).
        opts[1] = milter._protocol = offered & (steps | ~_STEP_BITS)
        opts[2] = opts[3] = 0
    except Exception:
        log.exception("milter negotiation failed; falling back to all protocol steps")
        return int(Milter.ALL_OPTS)
    return int(Milter.CONTINUE)


def guarded(callback: F) -> F:
    """Catch everything a callback raises: log it, and tempfail instead of crashing."""

    @functools.wraps(callback)
    def wrapper(self: SendwardenMilter, *args: Any) -> Any:
        try:
            return callback(self, *args)
        except Exception:
            log.exception("milter %s callback failed", callback.__name__)
            self.session.failed(callback.__name__)
            if callback.__name__ in ("header", "body", "connect", "close", "abort"):
                return Milter.CONTINUE  # no reply allowed here: refuse at end of message
            return render(self, INTERNAL_ERROR)

    return wrapper  # type: ignore[return-value]


def _no_pipeline() -> Lease:
    raise RuntimeError("set_pipeline_source() was not called before the milter started")


_pipeline_source: Callable[[], Lease] = _no_pipeline


def set_pipeline_source(source: Callable[[], Lease]) -> None:
    """Where new connections lease their pipeline (a new one after each reload)."""
    global _pipeline_source
    _pipeline_source = source


def client_from_connect(hostname: str, family: int, hostaddr: Any) -> Client:
    """The client as libmilter describes it. Postfix presents sendmail(1) mail
    (non_smtpd_milters) as ``localhost`` 127.0.0.1 port 0."""
    address: IPAddress | None = None
    port = 0
    if family in (socket.AF_INET, socket.AF_INET6) and hostaddr:
        host = hostaddr[0] if isinstance(hostaddr, tuple) else hostaddr
        port = int(hostaddr[1]) if isinstance(hostaddr, tuple) and len(hostaddr) > 1 else 0
        try:
            address = ipaddress.ip_address(str(host).split("%")[0])
        except ValueError:
            address = None
    local = (
        isinstance(hostaddr, tuple)
        and port == 0
        and address is not None
        and address.is_loopback
        and hostname == "localhost"
    )
    return Client(address=address, hostname=hostname or "", port=port, local_submission=local)


def with_socket_owner(client: Client, daemon_addr: str | None, daemon_port: str | None) -> Client:
    """The client with the uid the kernel recorded for its socket, when it is a local
    process (Sendmail's MSP and anything else on this host talking SMTP to the MTA)."""
    server = parse_endpoint(daemon_addr, daemon_port)
    if client.address is None or not client.port or server is None:
        return client
    uid = socket_owner_uid((client.address, client.port), server)
    return client if uid is None else dataclasses.replace(client, uid=uid)


class SendwardenMilter(Milter.Base):  # type: ignore[misc]
    """One instance per MTA connection; transactions follow one another on it. The
    transaction itself lives in a :class:`PolicySession`, shared with the SMTP proxy."""

    def __init__(self) -> None:
        # Fixed for the connection's life; given back when the connection closes.
        self.pipeline, self._release_pipeline = _pipeline_source()
        self.session = PolicySession(self.pipeline)
        self._metrics = metrics.current()
        if self._metrics is not None:
            self._metrics.connections.inc()

    @property
    def client(self) -> Client:
        return self.session.client

    @property
    def txn(self) -> Transaction | None:
        return self.session.txn

    @Milter.noreply
    @guarded
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        client = client_from_connect(hostname, family, hostaddr)
        if self.getsymval("{daemon_name}") in self.pipeline.settings.milter.peer_uid_daemons:
            client = with_socket_owner(
                client, self.getsymval("{daemon_addr}"), self.getsymval("{daemon_port}")
            )
        self.session.client = client
        return int(Milter.CONTINUE)

    def negotiate(self, opts: list[int]) -> int:
        """Base.negotiate, with this connection's steps (see :func:`negotiate_steps`)."""
        steps = protocol_steps(
            needs_body=self.pipeline.needs_body,
            data_reply=is_inet(self.pipeline.settings.milter.socket),
        )
        return negotiate_steps(self, opts, steps)

    @guarded
    def envfrom(self, mail_from: str, *params: str) -> int:
        return self._reply(
            self.session.mail(
                strip_brackets(mail_from),
                login=self.getsymval("{auth_authen}"),
                queue_id=self.getsymval("i") or "",
            )
        )

    @guarded
    def envrcpt(self, recipient: str, *params: str) -> int:
        txn = self.session.txn
        if txn is None:
            return int(Milter.CONTINUE)
        # Postfix opens the queue file (and names it) only after a valid RCPT.
        queue_id = "" if txn.queue_id else (self.getsymval("i") or "")
        return self._reply(self.session.rcpt(strip_brackets(recipient), queue_id))

    @Milter.noreply
    @guarded
    def header(self, name: str, value: str) -> int:
        self.session.header(name, value)
        return int(Milter.CONTINUE)

    @Milter.noreply
    @guarded
    def body(self, chunk: bytes) -> int:
        self.session.body(chunk)
        return int(Milter.CONTINUE)

    def data(self) -> int:
        """Negotiated (with a reply) on inet sockets only; answering is the point."""
        return int(Milter.CONTINUE)

    @guarded
    def eom(self) -> int:
        txn = self.session.txn
        if txn is None:
            return int(Milter.CONTINUE)
        queue_id = txn.queue_id or self.getsymval("i") or ""
        uid = None
        if txn.client.local_submission and queue_id:
            queue = self.pipeline.settings.milter.postfix_queue_directory
            uid = submitting_uid(queue, queue_id)
        verdict, changes = self.session.eom(queue_id=queue_id, uid=uid)
        self._apply(changes)
        return self._reply(verdict)

    @guarded
    def abort(self) -> int:
        self.session.abort()
        return int(Milter.CONTINUE)

    def close(self) -> int:
        try:
            return self.abort()  # guarded: never raises
        finally:
            self._release_pipeline()
            if self._metrics is not None:  # once, however often close() is called
                self._metrics.connections.dec()
                self._metrics = None

    def _apply(self, changes: MessageChanges) -> None:
        """Header and recipient edits the checks asked for (end of message only)."""
        for name, index in changes.remove_headers:
            self.chgheader(name, index, "")
        for recipient in changes.remove_recipients:
            self.delrcpt(f"<{recipient}>")
        for position, (name, value) in enumerate(changes.add_headers):
            self.addheader(name, value, position)

    def _reply(self, verdict: Verdict) -> int:
        return render(self, verdict)


def is_inet(socket_spec: str) -> bool:
    return socket_spec.partition(":")[0] in ("inet", "inet6")
