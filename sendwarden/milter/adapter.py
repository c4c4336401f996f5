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
from sendwarden.pipeline import new_session_id
from sendwarden.policy.facts import Client, IPAddress, MessageChanges, Transaction
from sendwarden.policy.verdict import Action, Verdict, tempfail

log = logging.getLogger(__name__)

INTERNAL_ERROR = tempfail(
    "internal-error",
    "451",
    "4.3.0",
    "Temporary problem in the sending policy filter; the message was not accepted, "
    "please try again later.",
)
FAILED = "_adapter_failed"

F = TypeVar("F", bound=Callable[..., Any])

# The only macros the checks read: the SASL login at MAIL, the queue id (which
# Postfix's smtpd knows only from the second RCPT on, and always at end of message).
MACROS = {
    Milter.M_CONNECT: "j",
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
            if self.txn is not None:
                self.txn.scratch[FAILED] = True
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


class SendwardenMilter(Milter.Base):  # type: ignore[misc]
    """One instance per MTA connection; transactions follow one another on it."""

    def __init__(self) -> None:
        # Fixed for the connection's life; given back when the connection closes.
        self.pipeline, self._release_pipeline = _pipeline_source()
        self.client = Client(address=None)
        self.txn: Transaction | None = None
        self.session = new_session_id()  # on every decision line of this connection
        self._metrics = metrics.current()
        if self._metrics is not None:
            self._metrics.connections.inc()

    @Milter.noreply
    @guarded
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        self.client = client_from_connect(hostname, family, hostaddr)
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
        if self.txn is not None:  # a transaction the MTA never closed
            self.pipeline.abort(self.txn)
        self.txn = self.pipeline.begin(
            self.client,
            login=self.getsymval("{auth_authen}"),
            mail_from=strip_brackets(mail_from),
            queue_id=self.getsymval("i") or "",
            session=self.session,
        )
        verdict = self.pipeline.mail(self.txn)
        if verdict.is_final:
            self.txn = None
        return self._reply(verdict)

    @guarded
    def envrcpt(self, recipient: str, *params: str) -> int:
        if self.txn is None:
            return int(Milter.CONTINUE)
        # Postfix opens the queue file (and names it) only after a valid RCPT.
        queue_id = "" if self.txn.queue_id else (self.getsymval("i") or "")
        return self._reply(self.pipeline.rcpt(self.txn, strip_brackets(recipient), queue_id))

    @Milter.noreply
    @guarded
    def header(self, name: str, value: str) -> int:
        if self.txn is not None:
            self.pipeline.header(self.txn, name, value)
        return int(Milter.CONTINUE)

    @Milter.noreply
    @guarded
    def body(self, chunk: bytes) -> int:
        if self.txn is not None:
            self.pipeline.body(self.txn, chunk)
        return int(Milter.CONTINUE)

    def data(self) -> int:
        """Negotiated (with a reply) on inet sockets only; answering is the point."""
        return int(Milter.CONTINUE)

    @guarded
    def eom(self) -> int:
        txn, self.txn = self.txn, None
        if txn is None:
            return int(Milter.CONTINUE)
        txn.queue_id = txn.queue_id or self.getsymval("i") or ""
        if txn.client.local_submission and txn.queue_id:
            queue = self.pipeline.settings.milter.postfix_queue_directory
            txn.uid = submitting_uid(queue, txn.queue_id)
        if txn.scratch.get(FAILED):
            self.pipeline.abort(txn)
            return self._reply(INTERNAL_ERROR)
        verdict = self.pipeline.eom(txn)
        if not verdict.is_final or verdict.action is Action.ACCEPT:
            self._apply(txn.changes)
        return self._reply(verdict)

    @guarded
    def abort(self) -> int:
        txn, self.txn = self.txn, None
        if txn is not None:
            self.pipeline.abort(txn)
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
