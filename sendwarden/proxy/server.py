"""The SMTP policy proxy on aiosmtpd: the MTA hands it outbound mail, the pipeline
judges it step by step (the same checks and reply text as the milter, through
:class:`sendwarden.session.PolicySession`), and what passes is relayed to the next hop,
whose reply is the proxy's reply.

Two ways in:

- ``mta = "exim"``: Exim's proxy transport logs in with the shared secret and sends the
  sender's identity as a forced ``AUTH=`` parameter (see :mod:`.identity`). Checks run
  live: a refusal at MAIL or RCPT is that command's reply, so Exim defers (4xx) or
  bounces (5xx) exactly the recipients concerned, with the rule's text.
- ``mta = "postfix"`` (``smtpd_proxy_filter``): the identity is whole only at DATA
  (XFORWARD for the client, smtpd's Received header for the login), so MAIL and RCPT
  are collected and the message is judged whole at end of data, like a sendmail(1)
  submission in the milter.

SIGHUP reloads the configuration as the milter does: a connection keeps the rules it
started with, new ones get the new file (and secret); a file that does not load is
refused with a log line and the running configuration stays.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import hmac
import inspect
import ipaddress
import logging
import os
import re
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from pathlib import Path
from typing import Any, AnyStr, ClassVar, TypeVar

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session

from sendwarden.config import ConfigError, Settings, load_settings
from sendwarden.milter.generations import Generations
from sendwarden.policy.facts import Client
from sendwarden.policy.verdict import Action, Verdict
from sendwarden.proxy.identity import (
    IdentityError,
    ProvenIdentity,
    parse_exim_identity,
    postfix_login,
)
from sendwarden.proxy.message import SplitMessage, apply_changes, split_message
from sendwarden.proxy.policy_socket import answer, before_queue_pipeline, serve_policy_socket
from sendwarden.proxy.relay import (
    IDLE_SECONDS,
    MECHANISM,
    NextHop,
    Outgoing,
    Relay,
    RelayPool,
)
from sendwarden.replies import smtp_reply
from sendwarden.runtime import Runtime, build_runtime
from sendwarden.session import INTERNAL_ERROR, PolicySession

log = logging.getLogger(__name__)
T = TypeVar("T")

NO_IDENTITY = (
    "451 4.7.0 The policy proxy got no proven sender identity from the MTA (AUTH= "
    "parameter missing or unreadable); the message waits in the MTA's queue."
)
MAIL_PARAMS_PASSED = ("BODY", "SMTPUTF8", "RET", "ENVID")
RCPT_PARAMS_PASSED = ("NOTIFY", "ORCPT")
HOOK_PREFIXES = ("smtp_", "auth_", "handle_")  # what aiosmtpd looks for


def _split_params(arg: str, ours: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """``<addr> K=V ...`` -> (the argument without our keywords, {KEYWORD: raw value})."""
    address, space, rest = arg.partition(">")
    kept: list[str] = []
    taken: dict[str, str] = {}
    for param in rest.split():
        keyword, _, value = param.partition("=")
        if keyword.upper() in ours:
            taken[keyword.upper()] = value
        else:
            kept.append(param)
    return f"{address}{space}{' ' + ' '.join(kept) if kept else ''}", taken


class _Session(Session):
    """aiosmtpd's session without the deprecation warning that aiosmtpd's own AUTH code
    logs on every login (it still sets the legacy ``login_data``)."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class _Reader(asyncio.StreamReader):
    """How the proxy reads its MTA once the MTA's FIN has come: the commands it sent
    before are still read and answered; reading past them ends the session, as
    aiosmtpd ends it at the FIN itself."""

    async def readuntil(self, separator: Any = b"\n") -> bytes:
        try:
            return await super().readuntil(separator)
        except asyncio.IncompleteReadError:  # the end of what the client sent
            raise asyncio.CancelledError from None  # what aiosmtpd expects then

    async def read_text(self, line_limit: int, size_limit: int | None) -> bytes | str:
        """The text after DATA up to its lone dot, unstuffed (RFC 5321 4.5.2), or the
        reply refusing it once all of it is read (a line longer than ``line_limit``
        bytes, more than ``size_limit``): what aiosmtpd's DATA reading gives
        (tests/unit/test_proxy.py), taken a buffer at a time instead of a line at a
        time, which was a tenth of the proxy's CPU per message. The MTA leaving before
        the dot ends the session as aiosmtpd ends it (CancelledError)."""
        buffer: bytearray = self._buffer  # type: ignore[attr-defined]
        pieces: list[bytes] = []
        size, refusal = 0, ""
        line_start = True  # the buffer begins a line
        while True:
            done = line_start and buffer[:3] == b".\r\n"
            if done:
                cut = 0
            else:
                found = buffer.find(b"\r\n.\r\n")
                done = found >= 0
                cut = found + 2 if done else buffer.rfind(b"\r\n") + 2
                if cut < 2:  # no line end yet: wait, unless the line is already too long
                    cut = len(buffer) - 1 if len(buffer) > line_limit + 1 else 0
            if cut:
                piece = bytes(buffer[:cut])
                del buffer[:cut]
                size, refusal = _account(piece, size, refusal, line_limit, size_limit)
                if not refusal:  # whole lines only (a partial one is a refusal)
                    pieces.append(_unstuff(piece))
                else:
                    pieces.clear()  # kept no longer than needed
                line_start = piece.endswith(b"\r\n")
            if done:
                del buffer[:3]
                self._maybe_resume_transport()  # type: ignore[attr-defined]
                return refusal or b"".join(pieces)
            self._maybe_resume_transport()  # type: ignore[attr-defined]
            if self._eof:  # type: ignore[attr-defined]  # the MTA left in the middle
                buffer.clear()  # of the text: the rest is no command either
                raise asyncio.CancelledError
            await self._wait_for_data("read_text")  # type: ignore[attr-defined]


TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"  # aiosmtpd's own replies
TOO_MUCH = "552 Error: Too much mail data"


def _account(
    piece: bytes, size: int, refusal: str, line_limit: int, size_limit: int | None
) -> tuple[int, str]:
    """The text's size after ``piece`` (whole lines, or the start of one too long), and
    its refusal, in the order aiosmtpd finds them line by line: a line past the
    reader's limit is refused before it is counted, any other counted first."""
    total = size + len(piece)
    if refusal or (
        (not size_limit or total <= size_limit)
        and max(map(len, piece.split(b"\r\n"))) + 2 <= line_limit
    ):  # fmt: skip
        return total, refusal
    *lines, rest = piece.split(b"\r\n")
    for line in lines:
        if len(line) > line_limit:
            return total, TOO_LONG
        size += len(line) + 2
        if size_limit and size > size_limit:
            return total, TOO_MUCH
        if len(line) + 2 > line_limit:
            return total, TOO_LONG
    return total, TOO_LONG if rest else ""


def _unstuff(piece: bytes) -> bytes:
    """Whole lines without the dot the client doubled at their start."""
    if piece[:1] == b".":
        piece = piece[1:]
    return piece.replace(b"\r\n.", b"\r\n")


class _HooksOnly:
    """``dir()`` lists only the SMTP hooks. aiosmtpd's constructor finds the hooks of
    the connection and of the handler with ``dir()`` and ``inspect.getmembers()``
    (which reads every attribute) on every new connection: a tenth of the proxy's CPU
    per message, and on the way of each message (the MTA waits for our banner)."""

    _names: ClassVar[dict[type, list[str]]] = {}

    def __dir__(self) -> list[str]:
        names = _HooksOnly._names.get(type(self))
        if names is None:
            names = [name for name in dir(type(self)) if name.startswith(HOOK_PREFIXES)]
            _HooksOnly._names[type(self)] = names
        return names


class ProxySMTP(_HooksOnly, SMTP):
    """One MTA connection. Keeps the connection's policy session and next-hop pool,
    and the parameters aiosmtpd would refuse (AUTH=, DSN) before it sees them."""

    line_length_limit = 1 << 16

    def __init__(self, handler: ProxyHandler, *, auth_required: bool, **kwargs: Any) -> None:
        # AUTH without TLS is by design here (loopback or a unix socket, the MTA's own
        # secret), but aiosmtpd logs a warning about it for every connection when told
        # so at its start: it is told just after.
        # The text stays bytes (decode_data): it is relayed as it came.
        super().__init__(handler, auth_required=False, **{**kwargs, "decode_data": False})
        self._auth_required = auth_required  # 530 to MAIL, RCPT, DATA before AUTH
        self.proxy = handler
        # The configuration this connection keeps, whatever a reload does meanwhile.
        pipeline, self.release = handler.generations.lease()
        self.policy = PolicySession(pipeline)
        self.relays = handler.relays
        self.auth_param: str | None = None
        self.mail_params: dict[str, str] = {}
        self.rcpt_params: dict[str, str] = {}
        self.rcpts: list[tuple[str, list[str]]] = []
        self.xforward: dict[str, str] = {}
        self.early: Early | None = None  # the next hop's transaction, opened at DATA

        self._held: list[bytes] = []  # the lines of a multi-line reply so far

    def _create_session(self) -> Session:
        return _Session(self.loop)

    def _cb_client_connected(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:  # fmt: skip
        reader.__class__ = _Reader  # only readuntil differs
        super()._cb_client_connected(reader, writer)

    def eof_received(self) -> bool | None:
        """The MTA's FIN. aiosmtpd drops the session here, with commands unanswered;
        an MTA may send its last commands and its FIN together when the server
        announces PIPELINING (Exim's transport: the final dot, QUIT and the FIN), and
        expects their replies. So the commands already received are answered (the
        transport stays open for writing) and the session ends after them."""
        return asyncio.StreamReaderProtocol.eof_received(self)

    async def push(self, status: AnyStr) -> None:
        """Replies are written as RFC 2920 asks of a pipelining server: held while the
        MTA's next command is already here (it reads them all before it goes on), and
        written with the first reply after which nothing waits; the lines of a
        multi-line reply (EHLO's) with the last one. Each write is a system call here
        and a read and a wake-up in the MTA: Exim sends MAIL and RCPT together, and the
        final dot with QUIT. A 3xx (354, an AUTH challenge) is never held: the client
        waits for it before it sends more."""
        line = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii") if isinstance(
            status, str) else bytes(status)  # fmt: skip
        if line[3:4] == b"-" or (line[:1] != b"3" and self._next_command_waits()):
            self._held.append(line + b"\r\n")
            return
        held, self._held = self._held, []
        await super().push(b"".join(held) + line)

    def _next_command_waits(self) -> bool:
        """A whole line of the MTA's is already read and not yet taken: it will be
        answered next, so the reply just made can go out with that one."""
        reader = getattr(self, "_reader", None)
        buffer = getattr(reader, "_buffer", None)  # asyncio.StreamReader's own
        return buffer is not None and b"\n" in buffer

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's own parsing of a MAIL/RCPT address, without the class it defines
        anew on every call; a plain ``<local@domain>`` (nearly every address) by a
        regular expression that gives what the parser gives (tests/unit/test_proxy.py),
        at a fiftieth of its cost."""
        if not arg:
            return "", ""
        simple = _SIMPLE_PATH.match(arg)
        if simple:
            addr: str = simple.group(1)
            rest = arg[simple.end() :]
        else:
            try:
                addr, rest = _parse_path(arg)
            except HeaderParseError:
                return None, None
        if self.local_part_limit and len(addr.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return addr, rest

    async def smtp_MAIL(self, arg: str | None) -> None:
        self.auth_param = None
        self.mail_params = {}
        self.rcpts = []
        if arg:
            arg, taken = _split_params(arg, ("AUTH", *MAIL_PARAMS_PASSED))
            self.auth_param = taken.pop("AUTH", None)
            self.mail_params = taken
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        self.rcpt_params = {}
        if arg:
            arg, self.rcpt_params = _split_params(arg, RCPT_PARAMS_PASSED)
        await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg: str | None) -> None:
        """aiosmtpd's DATA, with the text read a buffer at a time (:meth:`_Reader.
        read_text`), and with the next hop's transaction opened as the text starts:
        while the MTA sends it (and writes its own spool copy), the envelope already
        goes to the next hop, so that at the end only the text is left to pass: a round
        trip to the next hop (and, every tenth message, its connection) less between
        the MTA's final dot and our reply."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if self.envelope is None or not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        envelope = Outgoing(
            mail_from=self.envelope.mail_from or "",
            mail_params=[f"{k}={v}" for k, v in self.mail_params.items()],
            recipients=list(self.rcpts),
        )
        with contextlib.suppress(RuntimeError):  # the proxy is shutting down
            self.early = self.proxy.executor.submit(_open_early, self.relays, envelope)
        try:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            reader = self._reader
            assert isinstance(reader, _Reader)
            try:
                text = await reader.read_text(self.line_length_limit, self.data_size_limit)
            except asyncio.CancelledError:
                log.debug("connection lost during DATA")
                self._writer.close()
                raise
            if isinstance(text, str):  # refused, once all of it was read
                self._set_post_data_state()  # type: ignore[no-untyped-call]
                await self.push(text)
                return
            self.envelope.content = self.envelope.original_content = text
            status = await self._call_handler_hook("DATA")
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push("250 OK" if status is MISSING else status)
        finally:
            early, self.early = self.early, None
            if early is not None:  # no end of data came (too big, connection lost...)
                with contextlib.suppress(RuntimeError):  # the proxy is shutting down
                    self.proxy.executor.submit(_give_up_early, self.relays, early)

    async def smtp_XFORWARD(self, arg: str | None) -> None:
        """Postfix's client attributes (only in postfix mode, where only Postfix
        reaches the proxy)."""
        if not self.proxy.postfix_mode:
            await self.push("502 5.5.1 XFORWARD is not accepted here")
            return
        for item in (arg or "").split():
            name, _, value = item.partition("=")
            self.xforward[name.upper()] = value
        await self.push("250 2.0.0 Ok")

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        policy, release = self.policy, self.release
        if policy.txn is None and not self.proxy.generations.retired_in_use:
            # Nothing to give back (the usual end, after QUIT) and no retired
            # configuration to close: no need to wait for a worker thread.
            release()
            return
        try:
            self.proxy.executor.submit(_end_connection, policy, release)
        except RuntimeError:  # the proxy is shutting down: end it here
            _end_connection(policy, release)


_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATOM}(?:\.{_ATOM})*"
#: ``<dot-atom@dot-atom>`` and the blanks after it, unless a comment follows.
_SIMPLE_PATH = re.compile(rf"<({_DOT_ATOM}@{_DOT_ATOM})>(?![ \t]*\()[ \t]*")


def _parse_path(arg: str) -> tuple[str, str]:
    """(address, what follows it), as aiosmtpd parses a MAIL/RCPT argument."""
    if arg.lstrip().startswith("<"):
        angle, rest = get_angle_addr(arg)
        return str(angle.addr_spec), str(rest)
    spec, rest = get_addr_spec(arg)
    return str(spec.addr_spec), str(rest)


def _settle(done: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    """A worker's result, on the event loop (unless the awaiting step was cancelled)."""
    if done.done():
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)  # type: ignore[arg-type]


def _reverse_path(address: str | None) -> str:
    """The sender as the pipeline takes it: "" for the null reverse path ``<>``."""
    return "" if address in (None, "<>") else str(address).strip("<>")


#: The next hop's transaction opened at DATA: the relay, its answer to the envelope
#: (``None``: it waits for the text), and the envelope it was given.
Early = concurrent.futures.Future[tuple[Relay, "str | None", Outgoing]]


def _open_early(relays: RelayPool, envelope: Outgoing) -> tuple[Relay, str | None, Outgoing]:
    relay = relays.acquire()
    try:
        return relay, relay.begin(envelope), envelope
    except BaseException:
        relays.release(relay)
        raise


def _give_up_early(relays: RelayPool, early: Early) -> None:
    """Nothing will be relayed on it: back to the pool, or dropped if the next hop
    waits for a text (it then keeps nothing)."""
    try:
        relay = early.result()[0]
    except Exception:  # _open_early gave it back already
        return
    relays.release(relay)


@dataclass(frozen=True)
class TextSent:
    """The message's text went to the next hop on ``relay`` (held until its reply is
    read, on the event loop)."""

    relay: Relay
    outgoing: Outgoing


def _relay(
    relays: RelayPool, outgoing: Outgoing, early: Early | None, text_only: bool = False
) -> str | TextSent:
    """The next hop's reply to the message: on the transaction opened at DATA when it
    is for the same envelope, else (recipients removed, connection lost) on another.
    ``text_only``: on the transaction opened at DATA, only send the text (the reply
    is then read on the event loop, :meth:`ProxyHandler._reply_to_text`)."""
    if early is not None:
        reply = _relay_early(relays, outgoing, early, text_only)
        if reply is not None:
            return reply
    return _send(relays, outgoing)


def _send(relays: RelayPool, outgoing: Outgoing) -> str:
    """The whole message on a connection of the pool, and the next hop's reply."""
    relay = relays.acquire()
    try:
        return relay.send(outgoing)
    finally:
        relays.release(relay)


def _relay_early(
    relays: RelayPool, outgoing: Outgoing, early: Early, text_only: bool
) -> str | TextSent | None:
    """The reply on the transaction opened at DATA (or the text sent on it), or
    ``None`` to send it anew."""
    try:
        relay, answer, envelope = early.result()
    except Exception:  # send() will fail the same way, and say why
        return None
    held = False
    try:
        if (envelope.mail_from, envelope.mail_params, envelope.recipients) != (
            outgoing.mail_from, outgoing.mail_params, outgoing.recipients,
        ):  # fmt: skip
            return None  # the policy removed recipients: a transaction of its own
        if answer is not None:  # the next hop refused the envelope (or is unreachable)
            return answer
        if not text_only:
            return relay.finish(outgoing.data)  # None: lost before its reply
        held = relay.send_text(outgoing.data)
        return TextSent(relay, outgoing) if held else None
    finally:
        if not held:
            relays.release(relay)


def _end_connection(policy: PolicySession, release: Callable[[], None]) -> None:
    try:
        policy.abort()
    except Exception:
        log.exception("ending a policy session failed")
    finally:
        release()


class ProxyHandler(_HooksOnly):
    """aiosmtpd hooks; the pipeline runs on worker threads (it blocks on Redis)."""

    def __init__(
        self, settings: Settings, runtime: Runtime, secret: str,
        config_path: str | Path | None = None,
    ) -> None:  # fmt: skip
        self.config_path = config_path
        self.generations: Generations[Runtime] = Generations(runtime)
        self.postfix_mode = settings.proxy.mta == "postfix"  # fixed: the listener's kind
        self._reloading = threading.Lock()
        self._use(settings, secret)
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.proxy.workers, thread_name_prefix="sw-proxy"
        )

    def _use(self, settings: Settings, secret: str) -> None:
        """What new connections get (each connection keeps its own pool and lease)."""
        proxy = settings.proxy
        self.settings = settings
        self.secret = secret
        host, _, port = proxy.next_hop.rpartition(":")
        self.next_hop = NextHop(host.strip("[]"), int(port), proxy.next_hop_login,
                                secret, float(proxy.timeout),
                                mechanism="PLAIN" if self.postfix_mode else MECHANISM)  # fmt: skip
        previous = getattr(self, "relays", None)
        self.relays = RelayPool(self.next_hop)
        if previous is not None:
            previous.close()
        current = self.generations.current.pipeline
        self._before_queue = (current, before_queue_pipeline(current))

    @property
    def runtime(self) -> Runtime:
        """The configuration new connections get."""
        return self.generations.current

    def reload_once(self) -> bool:
        with self._reloading:
            return self.reload()

    def reload(self) -> bool:
        """SIGHUP: the configuration file (and secret) again, for new connections; a
        file that does not load, or a secret that cannot be read, keeps the old one."""
        if self.config_path is None:
            log.error("reload refused: the proxy was not started from a configuration file")
            return False
        try:
            settings = load_settings(self.config_path)
            secret = read_secret(settings)
            check_settings(settings, secret)
            if (settings.proxy.mta == "postfix") != self.postfix_mode:
                raise ConfigError("proxy.mta", "changed: that takes a restart")
            runtime = build_runtime(settings, self.runtime)
        except (ConfigError, OSError, ValueError) as error:
            log.error("reload refused, keeping the running configuration: %s", error)
            return False
        runtime.open_stores_soon()
        old = self.settings.proxy
        for key in ("listen", "policy_listen", "workers"):
            if getattr(settings.proxy, key) != getattr(old, key):
                log.warning("proxy.%s changed; it takes effect only after a restart", key)
        self.generations.replace(runtime)
        self._use(settings, secret)
        log.info("configuration reloaded from %s (%d earlier ones still finish connections)",
                 self.config_path, self.generations.retired_in_use)  # fmt: skip
        return True

    def policy_answer(self, line: str) -> str:
        """One ${readsocket} request (worker thread), under the configuration current
        when it arrived."""
        (source, before_queue), secret = self._before_queue, self.secret
        pipeline, release = self.generations.lease()
        try:
            if source is not pipeline:  # a reload in between
                before_queue = before_queue_pipeline(pipeline)
            return answer(before_queue, secret, line)
        finally:
            release()

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on a worker thread. The worker hands the result straight
        to the event loop (one ``call_soon_threadsafe``), instead of run_in_executor's
        chain of two futures and their callbacks: this hop is taken three times a
        message. Cancelled while it waits (the MTA is gone), the call does not start
        if it has not yet, as with run_in_executor."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()

        def call() -> None:
            try:
                result = function(*args)
            except BaseException as error:  # handed to the awaiting step, as run_in_executor
                loop.call_soon_threadsafe(_settle, done, None, error)
            else:
                loop.call_soon_threadsafe(_settle, done, result, None)

        started = self.executor.submit(call)
        try:
            return await done
        except asyncio.CancelledError:
            started.cancel()
            raise

    # -- authentication: the MTA proves it is the MTA --------------------------------

    async def auth_X__SENDWARDEN(self, server: SMTP, args: list[str]) -> AuthResult:
        """``AUTH X-SENDWARDEN base64(\\0login\\0secret)``: a mechanism of its own, so
        it never meets the MTA's PLAIN/LOGIN authenticators for customers."""
        if len(args) == 1:
            response = await server.challenge_auth("")
            if response is MISSING:
                return AuthResult(success=False)
        else:
            try:
                response = base64.b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                return AuthResult(success=False)
        _, _, rest = bytes(response).partition(b"\0")
        login, _, password = rest.partition(b"\0")
        good = bool(self.secret) and hmac.compare_digest(password, self.secret.encode())
        good = hmac.compare_digest(login, self.settings.proxy.mta_login.encode()) and good
        if not good:
            peer = server.session.peer if server.session else None
            log.warning("proxy: failed login from %s as %r", peer, login)
        return AuthResult(success=good, auth_data=login, handled=False)

    # -- hooks --------------------------------------------------------------------

    async def handle_EHLO(
        self, server: ProxySMTP, session: Session, envelope: Envelope, hostname: str,
        responses: list[str],
    ) -> list[str]:  # fmt: skip
        session.host_name = hostname
        extra = ["250-DSN"]
        if self.postfix_mode:
            extra.append("250-XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT")
        else:
            # Exim's cutthrough to the proxy is on the way of every message (the
            # client waits at RCPT): with PIPELINING it sends MAIL and RCPT together,
            # one round trip less; its transport sends the envelope and DATA
            # together, and the final dot, QUIT and its FIN (eof_received). Every
            # command still gets its own reply, in order.
            extra.append("250-PIPELINING")
        return [*responses[:-1], *extra, responses[-1]]

    async def handle_RSET(self, server: ProxySMTP, session: Session, envelope: Envelope) -> str:
        if server.policy.txn is not None:  # giving back reservations talks to the store
            await self._run(server.policy.abort)
        return "250 2.0.0 OK"

    async def handle_MAIL(
        self, server: ProxySMTP, session: Session, envelope: Envelope, address: str,
        options: list[str],
    ) -> str:  # fmt: skip
        envelope.mail_from = address
        if self.postfix_mode:  # judged whole at end of data
            return "250 2.1.0 OK"
        try:
            identity = parse_exim_identity(server.auth_param or "")
        except IdentityError as error:
            log.error("proxy: refusing MAIL from %s: %s", session.peer, error)
            envelope.mail_from = None
            return NO_IDENTITY
        verdict = await self._guarded(server, self._mail, server, identity, address)
        if verdict.is_final:
            envelope.mail_from = None
            return smtp_reply(verdict)
        return "250 2.1.0 OK"

    @staticmethod
    def _mail(server: ProxySMTP, identity: ProvenIdentity, address: str) -> Verdict:
        server.policy.client = Client(address=identity.address, uid=identity.uid)
        return server.policy.mail(_reverse_path(address), login=identity.login)

    async def handle_RCPT(
        self, server: ProxySMTP, session: Session, envelope: Envelope, address: str,
        options: list[str],
    ) -> str:  # fmt: skip
        if not self.postfix_mode:
            verdict = await self._guarded(server, server.policy.rcpt, address)
            if verdict.is_final:
                return smtp_reply(verdict)
        envelope.rcpt_tos.append(address)
        server.rcpts.append((address, [f"{k}={v}" for k, v in server.rcpt_params.items()]))
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: ProxySMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        early, server.early = server.early, None  # ours now, whatever happens
        try:
            result = await self._run(self._judge_and_relay, server, envelope, content, early)
            if isinstance(result, TextSent):
                return await self._reply_to_text(server.relays, result)
            return result
        except Exception:
            log.exception("proxy: end of data failed")
            await self._run(server.policy.abort)
            return smtp_reply(INTERNAL_ERROR)

    async def _reply_to_text(self, relays: RelayPool, sent: TextSent) -> str:
        """The next hop's reply to the text, read here on the event loop (the next
        hop's spool write is most of the wait at the dot, and the reply is passed on
        the moment it comes); lost before it: the message again on another
        connection, as :meth:`Relay.finish` would."""
        try:
            reply = await sent.relay.reply()
        finally:
            if not relays.keep(sent.relay):
                try:
                    self.executor.submit(sent.relay.close)  # QUIT waits for a 221
                except RuntimeError:  # the proxy is shutting down
                    sent.relay.close()
        if reply is not None:
            return reply
        return await self._run(_send, relays, sent.outgoing)

    async def _guarded(
        self, server: ProxySMTP, step: Callable[..., Verdict], *args: Any
    ) -> Verdict:
        try:
            return await self._run(step, *args)
        except Exception:
            log.exception("proxy: %s failed", getattr(step, "__name__", "step"))
            server.policy.failed("step")
            return INTERNAL_ERROR

    # -- end of data (worker thread) -------------------------------------------------

    def _judge_and_relay(
        self, server: ProxySMTP, envelope: Envelope, content: bytes, early: Early | None = None
    ) -> str | TextSent:
        try:
            judged = self._judge(server, envelope, content)
        except BaseException:
            if early is not None:
                _give_up_early(server.relays, early)
            raise
        if isinstance(judged, str):  # refused, discarded, or nobody left
            if early is not None:
                _give_up_early(server.relays, early)
            return judged
        return _relay(server.relays, judged, early, text_only=True)

    def _judge(self, server: ProxySMTP, envelope: Envelope, content: bytes) -> str | Outgoing:
        """The reply the message gets without relaying, or what to relay."""
        message = split_message(content)
        policy = server.policy
        if self.postfix_mode:
            refused = self._replay_envelope(server, envelope, message)
            if refused is not None:
                return refused
        for header in message.headers:
            policy.header(header.name, header.value)
        if policy.pipeline.needs_body:
            for chunk in message.body_chunks():
                policy.body(chunk)
        verdict, changes = policy.eom(queue_id=server.xforward.get("IDENT", ""))
        if verdict.action is Action.DISCARD:
            return "250 2.0.0 OK: discarded by the sending policy"
        if verdict.is_final and verdict.action is not Action.ACCEPT:
            return smtp_reply(verdict)
        dropped = set(changes.remove_recipients)
        outgoing = Outgoing(
            mail_from=envelope.mail_from or "",
            mail_params=[f"{k}={v}" for k, v in server.mail_params.items()],
            recipients=[(rcpt, params) for rcpt, params in server.rcpts if rcpt not in dropped],
            data=apply_changes(message, changes),
        )
        if not outgoing.recipients:
            return "250 2.0.0 OK: no recipient left to deliver to"
        return outgoing

    def _replay_envelope(
        self, server: ProxySMTP, envelope: Envelope, message: SplitMessage
    ) -> str | None:
        """Postfix mode: MAIL and RCPT checks now that the identity is whole; any
        refusal refuses the message (one DATA reply covers every recipient)."""
        policy = server.policy
        first = message.headers[0] if message.headers else None
        login = postfix_login((first.name, first.value) if first else None)
        address: Any = None
        with contextlib.suppress(ValueError):
            address = ipaddress.ip_address(server.xforward.get("ADDR", "").removeprefix("IPv6:"))
        policy.client = Client(address=address, hostname=server.xforward.get("NAME", ""))
        verdict = policy.mail(_reverse_path(envelope.mail_from), login=login,
                              queue_id=server.xforward.get("IDENT", ""))  # fmt: skip
        if verdict.is_final:
            return smtp_reply(verdict)
        for recipient in envelope.rcpt_tos:
            verdict = policy.rcpt(recipient)
            if verdict.is_final:
                policy.abort()
                return smtp_reply(verdict)
        return None


# aiosmtpd asks for handle_EHLO's signature on every connection: computed once.
ProxyHandler.handle_EHLO.__signature__ = inspect.signature(  # type: ignore[attr-defined]
    ProxyHandler.handle_EHLO
)


# -- running it -------------------------------------------------------------------


def check_settings(settings: Settings, secret: str) -> None:
    if settings.proxy.mta == "exim" and not secret:
        raise ValueError('proxy.secret_file is required with proxy.mta = "exim"')


def read_secret(settings: Settings) -> str:
    """The shared secret (empty when none is configured)."""
    path = settings.proxy.secret_file
    if not path:
        return ""
    secret = Path(path).read_text(encoding="utf-8").strip()
    if len(secret) < 16:
        raise ValueError(f"{path}: the proxy secret must be at least 16 characters")
    return secret


def quiet_aiosmtpd() -> None:
    """aiosmtpd logs every connection, its AUTH mechanisms and each command at INFO
    (a tenth of the proxy's CPU per message), all of which the MTA logs already: only
    its warnings, unless the operator asked for debug lines."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("mail.log").setLevel(logging.WARNING)


async def serve(
    settings: Settings, ready: Callable[[], None] | None = None,
    config_path: str | Path | None = None,
) -> None:  # fmt: skip
    """Serve until SIGTERM/SIGINT; SIGHUP reloads ``config_path``."""
    secret = read_secret(settings)
    check_settings(settings, secret)
    quiet_aiosmtpd()
    runtime = build_runtime(settings)
    runtime.open_stores_soon()  # the first messages need not wait for it
    handler = ProxyHandler(settings, runtime, secret, config_path)
    proxy = settings.proxy

    loop = asyncio.get_running_loop()

    def factory() -> ProxySMTP:
        return ProxySMTP(
            handler,
            hostname=proxy.hostname,
            data_size_limit=proxy.max_message_bytes,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=float(proxy.timeout),
            auth_required=not handler.postfix_mode,
            auth_require_tls=False,
            auth_exclude_mechanism=["PLAIN", "LOGIN"],
            loop=loop,  # else aiosmtpd looks it up anew, resetting the warnings filters
        )

    listen = proxy.listen
    if listen.startswith("unix:"):
        path = listen.removeprefix("unix:")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        previous = os.umask(0o117)  # 0660: the MTA's group only
        try:
            server = await loop.create_unix_server(factory, path)
        finally:
            os.umask(previous)
    else:
        host, _, port = listen.rpartition(":")
        server = await loop.create_server(factory, host.strip("[]"), int(port))
    policy_server = None
    if proxy.policy_listen:
        policy_host, _, policy_port = proxy.policy_listen.rpartition(":")

        def respond(line: str) -> asyncio.Future[str]:
            return loop.run_in_executor(handler.executor, handler.policy_answer, line)

        policy_server = await serve_policy_socket(policy_host.strip("[]"), int(policy_port),
                                                  respond)  # fmt: skip
        log.info("sendwarden proxy: policy socket for SMTP-time replies on %s",
                 proxy.policy_listen)  # fmt: skip
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    # Loading Redis, the directory... blocks: off the event loop, one reload at a time.
    loop.add_signal_handler(signal.SIGHUP, lambda: handler.executor.submit(handler.reload_once))

    async def close_idle_relays() -> None:  # each idle one holds a next-hop process
        while True:
            await asyncio.sleep(IDLE_SECONDS)
            handler.executor.submit(handler.relays.close_idle)

    reaper = asyncio.create_task(close_idle_relays())
    log.info("sendwarden proxy (%s mode) listening on %s, relaying to %s",
             proxy.mta, listen, proxy.next_hop)  # fmt: skip
    if ready is not None:
        ready()
    try:
        await stopping.wait()
    finally:
        log.info("sendwarden proxy stopping")
        reaper.cancel()
        server.close()
        await server.wait_closed()
        if policy_server is not None:
            policy_server.close()
            await policy_server.wait_closed()
        handler.executor.shutdown(wait=True)
        handler.relays.close()
        handler.generations.close()
        log.info("sendwarden proxy stopped")
