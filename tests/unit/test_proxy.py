"""The proxy's pure parts: the identity Exim sends, and the message it relays."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import ipaddress
import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sendwarden.config import settings_from_mapping
from sendwarden.pipeline import Pipeline
from sendwarden.policy.facts import MessageChanges
from sendwarden.proxy.identity import (
    IdentityError,
    parse_exim_identity,
    postfix_login,
    xtext_decode,
)
from sendwarden.proxy.message import apply_changes, split_message
from sendwarden.proxy.policy_socket import answer, before_queue_pipeline
from sendwarden.proxy.relay import Outgoing
from sendwarden.proxy.server import (
    _SIMPLE_PATH,
    ProxyHandler,
    ProxySMTP,
    _parse_path,
    _Reader,
    _split_params,
)
from tests.unit.fakes import RecordingCheck


def exim_value(protocol: str, login: str, uid: str, address: str) -> str:
    """What the deploy/exim transport expands to."""
    encoded = base64.b64encode(login.encode()).decode()
    return f"sendwarden1;{protocol};{encoded};{uid};{address}"


def xtext(text: str) -> str:
    return "".join(f"+{ord(c):02X}" if c in "+=" or not 33 <= ord(c) <= 126 else c for c in text)


def test_smtp_auth_gives_the_login_and_address() -> None:
    identity = parse_exim_identity(exim_value("esmtpsa", "alice@acme.example", "101", "192.0.2.7"))
    assert identity.login == "alice@acme.example"
    assert identity.uid is None  # the Exim daemon's uid is no one's identity
    assert identity.address == ipaddress.ip_address("192.0.2.7")


def test_local_submission_gives_the_uid_not_the_login_name() -> None:
    # $authenticated_id of local mail is a login name root may override with -oMai.
    identity = parse_exim_identity(exim_value("local", "root", "1001", ""))
    assert (identity.uid, identity.login, identity.address) == (1001, None, None)


def test_unauthenticated_smtp_gives_only_the_address() -> None:
    identity = parse_exim_identity(exim_value("esmtp", "", "101", "[2001:db8::1]"))
    assert (identity.login, identity.uid) == (None, None)
    assert identity.address == ipaddress.ip_address("2001:db8::1")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "alice@acme.example",  # a customer's own AUTH= value
        "sendwarden1;esmtpa;not base64!;0;",
        "sendwarden1;esmtpa;;0;",  # authenticated without a login
        "sendwarden1;local;;x;",  # local without a uid
        "sendwarden1;esmtp;;0;not-an-ip",
        "sendwarden1;uucp;;0;",
        "sendwarden2;esmtpa;YWxpY2U=;0;",
    ],
)
def test_unreadable_identities_are_refused(value: str) -> None:
    with pytest.raises(IdentityError):
        parse_exim_identity(value)


@given(st.text(min_size=1))
def test_any_login_comes_back_exactly_whatever_it_contains(login: str) -> None:
    # A login holding ";local;0;" or xtext-like "+3B" cannot change another field.
    value = xtext(exim_value("esmtpa", login, "0", "127.0.0.1"))
    identity = parse_exim_identity(value)
    assert identity.login == login and identity.uid is None


@given(st.text())
def test_text_that_is_not_our_identity_never_yields_a_login_or_uid(text: str) -> None:
    if text.startswith("sendwarden1;"):
        return
    with pytest.raises(IdentityError):
        parse_exim_identity(xtext(text))


def test_xtext_decoding() -> None:
    assert xtext_decode("a+3Bb+2B") == "a;b+"


def test_postfix_login_only_from_smtpds_own_received_header() -> None:
    received = (
        "from client (client [192.0.2.1])\r\n\t(Authenticated sender: alice@acme.example)\r\n"
        "\tby mta.example (Postfix) with ESMTPSA id ABC"
    )
    assert postfix_login(("Received", received)) == "alice@acme.example"
    assert postfix_login(("Received", received.replace("(Postfix)", "(Exim)"))) is None
    assert postfix_login(("X-Note", received)) is None
    assert postfix_login(None) is None


def _connection(loop: asyncio.AbstractEventLoop) -> ProxySMTP:
    """A proxy connection as the server builds it, on a handler without a runtime."""

    class Generations:
        retired_in_use = 0

        def lease(self) -> tuple[object, Callable[[], None]]:
            return Pipeline(settings_from_mapping({}), []), lambda: None

    handler = ProxyHandler.__new__(ProxyHandler)  # its hooks, not its runtime
    handler.generations = Generations()  # type: ignore[assignment]
    handler.relays = None  # type: ignore[assignment]
    handler.postfix_mode = False
    return ProxySMTP(handler, hostname="proxy.test", auth_required=True,
                     auth_require_tls=False, auth_exclude_mechanism=["PLAIN", "LOGIN"],
                     enable_SMTPUTF8=True, loop=loop)  # fmt: skip


def test_a_connection_finds_every_hook_aiosmtpd_would_find() -> None:
    """dir() of a connection and of the handler lists only their hooks (aiosmtpd's
    constructor reads every attribute dir() lists, on every connection): the SMTP
    commands, AUTH mechanisms and handler hooks found are all those a full dir() has."""
    loop = asyncio.new_event_loop()
    try:
        connection = _connection(loop)
        handler = connection.event_handler
        every = object.__dir__(connection)
        assert set(connection._smtp_methods) == {
            name.removeprefix("smtp_") for name in every if name.startswith("smtp_")
        }
        assert {"MAIL", "RCPT", "DATA", "EHLO", "AUTH", "QUIT", "XFORWARD"} <= set(
            connection._smtp_methods
        )
        assert set(connection._handle_hooks) == {
            name.removeprefix("handle_")
            for name in object.__dir__(handler)
            if name.startswith("handle_")
        }
        assert set(connection._auth_methods) == {"X-SENDWARDEN"}
        assert connection._ehlo_hook_ver == "new"  # the 5-argument hook, as declared
    finally:
        loop.close()


class _Writer:
    """Where a connection's replies go in these tests: each write kept as it was made."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.writes.append(b"<closed>")


def test_a_multi_line_reply_goes_out_in_one_write() -> None:
    async def run() -> list[bytes]:
        connection = _connection(asyncio.get_running_loop())
        writer = _Writer()
        connection._writer = writer  # type: ignore[assignment]
        connection.session = connection._create_session()
        for line in ("250-proxy.test", "250-DSN", "250 HELP", "221 Bye"):
            await connection.push(line)
        return writer.writes

    assert asyncio.run(run()) == [b"250-proxy.test\r\n250-DSN\r\n250 HELP\r\n", b"221 Bye\r\n"]


def test_replies_to_pipelined_commands_go_out_together_and_none_is_lost() -> None:
    """RFC 2920's rule for a pipelining server: a reply waits while the client's next
    command is already read (Exim sends MAIL with RCPT, and the final dot with QUIT),
    and goes out with the first reply after which nothing waits. A 354 or an AUTH
    challenge is never held (the client waits for it before it sends more); nothing is
    held once the client's commands are all answered."""

    async def run() -> list[bytes]:
        connection = _connection(asyncio.get_running_loop())
        writer = _Writer()
        reader = asyncio.StreamReader()
        connection._writer = writer  # type: ignore[assignment]
        connection._reader = reader
        connection.session = connection._create_session()
        reader.feed_data(b"RCPT TO:<b@remote.example>\r\nDATA\r\n")
        await connection.push("250 2.1.0 OK")  # to MAIL: RCPT and DATA wait
        await reader.readuntil()
        await connection.push("250 2.1.5 OK")  # to RCPT: DATA waits
        await reader.readuntil()
        await connection.push("354 End data with <CR><LF>.<CR><LF>")  # never held
        reader.feed_data(b"QUI")  # not a whole command yet: nothing waits
        await connection.push("250 2.0.0 OK queued")
        reader.feed_data(b"T\r\n")
        await connection.push("250 2.0.0 OK again")  # QUIT waits
        await reader.readuntil()
        await connection.push("221 Bye")
        reader.feed_data(b"AUTH X-SENDWARDEN\r\n")
        await connection.push("334 ")  # a challenge goes out at once
        return writer.writes

    assert asyncio.run(run()) == [
        b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n",
        b"250 2.0.0 OK queued\r\n",
        b"250 2.0.0 OK again\r\n221 Bye\r\n",
        b"334 \r\n",
    ]


def test_a_step_on_a_worker_gives_its_result_or_error_and_a_cancelled_one_never_starts() -> None:
    """The proxy's steps run on worker threads and hand their result straight back to
    the event loop: the result or the exception arrives as the step's; a step whose
    MTA left before a worker took it (cancelled) never runs."""
    import threading

    handler = ProxyHandler.__new__(ProxyHandler)
    handler.executor = concurrent.futures.ThreadPoolExecutor(1)
    ran: list[str] = []
    gate = threading.Event()

    def fail() -> None:
        raise ValueError("store down")

    async def run() -> None:
        where, total = await handler._run(lambda a, b: (threading.current_thread(), a + b), 1, 2)
        assert total == 3 and where is not threading.current_thread()
        with pytest.raises(ValueError, match="store down"):
            await handler._run(fail)
        busy = asyncio.ensure_future(handler._run(gate.wait))  # the only worker waits
        waiting = asyncio.ensure_future(handler._run(ran.append, "late"))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        gate.set()
        assert await busy is True
        await handler._run(ran.append, "next")

    try:
        asyncio.run(run())
    finally:
        handler.executor.shutdown()
    assert ran == ["next"]


TEXT_PARTS = st.sampled_from(
    [b"a", b"xyz", b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.", b"\r\n..", b"\r\n.\r\n", b"x" * 30]
)


@settings(max_examples=400, deadline=None)
@example(parts=[b"x" * 30, b"\r\n", b"..", b"\r\n"], cuts=[7], line_limit=20, size_limit=None,
         ends=True)  # fmt: skip
@example(parts=[b"xyz", b"\r\n"] * 20, cuts=[3, 50], line_limit=40, size_limit=60, ends=True)
@example(parts=[b".", b"\r\n", b"..", b"\r\n.", b"\r\n"], cuts=[], line_limit=40,
         size_limit=None, ends=True)  # fmt: skip
@given(
    parts=st.lists(TEXT_PARTS, max_size=30),
    cuts=st.lists(st.integers(0, 500), max_size=8),
    line_limit=st.integers(6, 40),
    size_limit=st.sampled_from([None, 0, 10, 60, 200]),
    ends=st.booleans(),
)
def test_the_text_is_read_as_aiosmtpd_reads_it(
    parts: list[bytes], cuts: list[int], line_limit: int, size_limit: int | None, ends: bool
) -> None:
    """The proxy reads the text after DATA a buffer at a time; aiosmtpd's own DATA
    reads it a line at a time. Whatever the text (dots to unstuff, a lone dot, bare CR
    or LF, lines past the limit, too much data, the MTA leaving before the dot) and
    however it arrives in pieces, both give the same content or the same refusal,
    the same replies, and leave the same bytes (the next command) unread."""
    stream = b"".join(parts) + (b"\r\n.\r\nQUIT\r\n" if ends else b"")
    edges = sorted({0, len(stream), *(cut for cut in cuts if cut < len(stream))})
    chunks = [stream[a:b] for a, b in itertools.pairwise(edges)]

    async def run(data: Callable[[ProxySMTP, str | None], Any]) -> tuple[object, ...]:
        connection = _connection(asyncio.get_running_loop())
        connection.proxy.executor = executor  # nothing to relay to: the early open fails
        connection._writer = _Writer()  # type: ignore[assignment]
        connection._reader = reader = _Reader(limit=line_limit)
        connection.transport = object()  # type: ignore[assignment]
        connection.line_length_limit = line_limit
        connection.data_size_limit = size_limit
        connection._auth_required = False
        connection.session = connection._create_session()
        connection.session.host_name = "exim.test"
        connection.envelope = connection._create_envelope()
        connection.envelope.rcpt_tos.append("bob@remote.example")
        received: list[object] = []

        async def handle_data(server: SMTP, session: Session, envelope: Envelope) -> str:
            received.append(envelope.original_content)
            return "250 2.0.0 OK"

        connection._handle_hooks = {"DATA": handle_data}

        async def feed() -> None:
            for chunk in chunks:
                reader.feed_data(chunk)
                await asyncio.sleep(0)
            reader.feed_eof()

        feeder = asyncio.ensure_future(feed())
        try:
            await data(connection, None)
            outcome = "read"
        except asyncio.CancelledError:
            outcome = "cancelled"
        await feeder
        left = await reader.read()
        return outcome, received, connection._writer.writes, connection._held, left

    executor = concurrent.futures.ThreadPoolExecutor(1)
    try:
        ours = asyncio.run(run(ProxySMTP.smtp_DATA))
        theirs = asyncio.run(run(SMTP.smtp_DATA))
    finally:
        executor.shutdown()
    assert ours == theirs


PATH_TEXT = st.text(
    alphabet=st.sampled_from(list('ab.@<>\t ()"[]\\=+-_!é')) | st.characters(), max_size=40
)


@given(
    st.one_of(
        PATH_TEXT,
        st.builds(lambda a, b: f"<{a}@{b}>", PATH_TEXT, PATH_TEXT),
        st.builds(lambda a, rest: f"<{a}@acme.example>{rest}", PATH_TEXT, PATH_TEXT),
    )
)
def test_the_quick_address_reading_gives_what_the_parser_gives(arg: str) -> None:
    """A plain <local@domain> is read with a regular expression; whatever it takes,
    the full parser gives the same address and the same rest (parameters)."""
    simple = _SIMPLE_PATH.match(arg)
    if simple is None:
        return
    assert _parse_path(arg) == (simple.group(1), arg[simple.end() :])


def test_the_quick_address_reading_takes_the_usual_forms() -> None:
    for arg, address, rest in (
        ("<alice@acme.example>", "alice@acme.example", ""),
        ("<a.b+c@x.example> SIZE=1 BODY=8BITMIME", "a.b+c@x.example", "SIZE=1 BODY=8BITMIME"),
    ):
        simple = _SIMPLE_PATH.match(arg)
        assert simple is not None and (simple.group(1), arg[simple.end() :]) == (address, rest)
        assert _parse_path(arg) == (address, rest)
    for arg in ("<a@b> (comment) SIZE=1", '<"a b"@c>', " <a@b>", "<a..b@c>", "<é@x>", "a@b"):
        assert _SIMPLE_PATH.match(arg) is None  # left to the parser


def test_mail_parameters_are_taken_with_their_case() -> None:
    arg, taken = _split_params("<a@b.c> SIZE=10 AUTH=Sw+3Bx ENVID=AbC", ("AUTH", "ENVID"))
    assert arg == "<a@b.c> SIZE=10"
    assert taken == {"AUTH": "Sw+3Bx", "ENVID": "AbC"}


MESSAGE = (
    b"Received: from a\r\n\tby b\r\n"
    b"From: Alice <alice@acme.example>\r\n"
    b"X-Test: one\r\n"
    b"X-Test: two\r\n"
    b"\r\n"
    b"Body line\r\n\r\nX-Not: a header\r\n"
)


def test_headers_as_the_milter_protocol_passes_them() -> None:
    message = split_message(MESSAGE)
    assert [(h.name, h.value) for h in message.headers] == [
        ("Received", "from a\r\n\tby b"),
        ("From", "Alice <alice@acme.example>"),
        ("X-Test", "one"),
        ("X-Test", "two"),
    ]
    assert message.body == b"Body line\r\n\r\nX-Not: a header\r\n"


def test_changes_remove_by_index_and_prepend() -> None:
    changes = MessageChanges(
        add_headers=[("DKIM-Signature", "v=1"), ("X-Added", "yes")],
        remove_headers=[("x-test", 2)],
    )
    out = apply_changes(split_message(MESSAGE), changes)
    assert out.startswith(b"DKIM-Signature: v=1\r\nX-Added: yes\r\nReceived: from a\r\n")
    assert b"X-Test: one\r\n" in out and b"X-Test: two" not in out
    assert out.endswith(b"\r\n\r\nBody line\r\n\r\nX-Not: a header\r\n")


@given(st.binary())
def test_unchanged_messages_are_relayed_byte_for_byte(data: bytes) -> None:
    assert apply_changes(split_message(data), MessageChanges()) == data


# -- the policy socket: SMTP-time answers for Exim's RCPT ACL ---------------------------

SECRET = "s3cret-s3cret-s3cret"


def socket_pipeline() -> tuple[Pipeline, RecordingCheck]:
    from sendwarden.checks.relay import RelayCheck
    from sendwarden.checks.suspension import SuspensionCheck
    from tests.unit.fakes import MemorySuspensions

    settings = settings_from_mapping({"policy": {"local_domains": ["hosting.example"],
                                                 "trusted_networks": []}})  # fmt: skip
    counting = RecordingCheck()  # stands for the rate limit: must never be asked
    checks = [SuspensionCheck(MemorySuspensions()), RelayCheck(["hosting.example"]), counting]
    return before_queue_pipeline(Pipeline(settings, checks)), counting


def test_policy_socket_refuses_relay_at_rcpt_with_the_rule_text() -> None:
    pipeline, counting = socket_pipeline()
    identity = exim_value("esmtp", "", "101", "192.0.2.9")
    reply = answer(pipeline, SECRET, f"{SECRET} {identity} <x@else.example> <bob@remote.example>")
    assert reply.startswith("554 5.7.1 Relaying denied: bob@remote.example")
    assert [check.name for check in pipeline.checks] == ["suspended", "relay"]
    assert counting.calls == []


def test_policy_socket_says_dunno_to_what_it_cannot_decide_and_to_strangers() -> None:
    pipeline, _ = socket_pipeline()
    login = exim_value("esmtpa", "alice@acme.example", "101", "192.0.2.9")
    assert answer(pipeline, SECRET, f"{SECRET} {login} <a@acme.example> <b@remote.example>") == (
        "DUNNO"
    )
    stranger = exim_value("esmtp", "", "101", "192.0.2.9")
    for line in (f"wrong {stranger} <x@y.z> <b@remote.example>", "", f"{SECRET} junk <a> <b>"):
        assert answer(pipeline, SECRET, line) == "DUNNO"


def test_relay_pool_shares_next_hop_connections_up_to_exims_per_connection_limit() -> None:
    """Against a real SMTP server (the test sink): messages share connections, at most
    MESSAGES_PER_CONNECTION each (Exim would queue the ones after), every one answered
    250 and delivered once; idle connections are closed."""
    from sendwarden.proxy.relay import MESSAGES_PER_CONNECTION, NextHop, Outgoing, RelayPool
    from tests.support.sink import SmtpSink

    sink = SmtpSink().start()
    try:
        pool = RelayPool(NextHop("127.0.0.1", sink.port, timeout=10))
        count = MESSAGES_PER_CONNECTION + 2
        for number in range(count):
            relay = pool.acquire()
            message = Outgoing("a@acme.example", [], [(f"r{number}@x.example", [])],
                               b"Subject: s\r\n\r\nbody\r\n")  # fmt: skip
            try:
                assert relay.send(message).startswith("250")
            finally:
                pool.release(relay)
        delivered = sink.wait_for(count, timeout=10)
        assert sorted(m.rcpt_tos[0] for m in delivered) == sorted(
            f"r{number}@x.example" for number in range(count)
        )
        peers = [m.peer for m in delivered]
        assert len(set(peers)) == 2
        assert max(peers.count(peer) for peer in set(peers)) == MESSAGES_PER_CONNECTION
        pool.close()
        assert pool.acquire().connected is False  # nothing idle kept after close
    finally:
        sink.stop()


def test_the_transaction_opened_at_data_carries_the_message_or_delivers_nothing() -> None:
    """The proxy sends the envelope to the next hop while the MTA still sends the text
    (a real SMTP server, the test sink): the message then goes on that transaction;
    one the policy took recipients from goes on a transaction of its own; one not
    relayed at all (refused at end of data, connection lost) delivers nothing, and the
    connection that waited for its text is dropped, not reused."""
    from sendwarden.proxy.relay import NextHop, RelayPool
    from sendwarden.proxy.server import _give_up_early, _open_early, _relay
    from tests.support.sink import SmtpSink

    sink = SmtpSink().start()
    executor = concurrent.futures.ThreadPoolExecutor(2)
    pool = RelayPool(NextHop("127.0.0.1", sink.port, timeout=10))
    data = b"Subject: s\r\n\r\nbody\r\n"

    def envelope(*recipients: str) -> Outgoing:
        return Outgoing("s@acme.example", [], [(r, []) for r in recipients])

    def message(*recipients: str) -> Outgoing:
        return Outgoing("s@acme.example", [], [(r, []) for r in recipients], data)

    try:
        early = executor.submit(_open_early, pool, envelope("a@x.example", "b@x.example"))
        assert _relay(pool, message("a@x.example", "b@x.example"), early).startswith("250")
        first = early.result()[0]
        assert first.connected and not first.waits_for_text  # kept for the next one
        early = executor.submit(_open_early, pool, envelope("c@x.example", "d@x.example"))
        assert _relay(pool, message("c@x.example"), early).startswith("250")
        abandoned = executor.submit(_open_early, pool, envelope("e@x.example"))
        _give_up_early(pool, abandoned)
        assert not abandoned.result()[0].connected  # dropped in the middle of DATA
        early = executor.submit(_open_early, pool, envelope("f@x.example"))
        assert _relay(pool, message("f@x.example"), early).startswith("250")
        delivered = sink.wait_for(3, timeout=10)
        time.sleep(0.3)  # nothing more comes
        assert [list(m.rcpt_tos) for m in sink.messages] == [
            ["a@x.example", "b@x.example"], ["c@x.example"], ["f@x.example"],
        ]  # fmt: skip
        assert all(m.data.rstrip().endswith(b"body") for m in delivered)
    finally:
        pool.close()
        executor.shutdown()
        sink.stop()


class PipeliningHop:
    """aiosmtpd hooks of a next hop that announces PIPELINING, as Exim's return port
    and Postfix's reinjection smtpd do."""

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
        responses: list[str],
    ) -> list[str]:  # fmt: skip
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]


def test_relay_pipelines_the_envelope_to_a_pipelining_next_hop_and_keeps_its_replies() -> None:
    """Against an SMTP server that announces PIPELINING (as Exim's return port and
    Postfix's reinjection smtpd do): MAIL and the RCPTs go in one write (with DATA
    when there is one recipient), and the replies still decide as one by one: a
    refused MAIL is the message's reply, one refused recipient of two makes the
    message wait (nothing is delivered), and the connection goes on with the next
    message."""
    from aiosmtpd.controller import Controller

    from sendwarden.proxy.relay import NextHop, Outgoing, Relay
    from tests.support.ports import free_port

    class Handler(PipeliningHop):
        def __init__(self) -> None:
            self.delivered: list[tuple[str, list[str], list[str]]] = []  # MAIL, RCPTs, options
            self.pipelined = False
            self.data_with_envelope: list[bool] = []  # per MAIL: DATA in the same write

        async def handle_MAIL(
            self, server: SMTP, session: Session, envelope: Envelope, address: str,
            options: list[str],
        ) -> str:  # fmt: skip
            # The RCPTs are already waiting when MAIL is read: sent in one write.
            waiting = bytes(server._reader._buffer)  # type: ignore[attr-defined]
            self.pipelined = b"RCPT TO:" in waiting
            self.data_with_envelope.append(b"DATA\r\n" in waiting)
            if address.startswith("bad@"):
                return "550 5.7.1 sender refused here"
            envelope.mail_from, envelope.mail_options = address, options
            return "250 OK"

        async def handle_RCPT(
            self, server: SMTP, session: Session, envelope: Envelope, address: str,
            options: list[str],
        ) -> str:  # fmt: skip
            if address.startswith("nobody@"):
                return "550 5.1.1 no such user"
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            self.delivered.append(
                (str(envelope.mail_from), list(envelope.rcpt_tos), list(envelope.mail_options))
            )
            return "250 2.0.0 queued"

    handler = Handler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    relay = Relay(NextHop("127.0.0.1", controller.port, timeout=10))
    data = b"Subject: s\r\n\r\nbody\r\n"
    try:
        two = [("a@x.example", []), ("b@x.example", [])]
        assert relay.send(Outgoing("s@acme.example", ["BODY=8BITMIME"], two, data)).startswith(
            "250"
        )
        assert handler.pipelined
        assert handler.delivered == [("s@acme.example", ["a@x.example", "b@x.example"],
                                      ["BODY=8BITMIME"])]  # fmt: skip
        refused = Outgoing("bad@acme.example", [], [("a@x.example", [])], data)
        assert relay.send(refused) == "550 5.7.1 sender refused here"
        half = [("a@x.example", []), ("nobody@x.example", [])]
        reply = relay.send(Outgoing("s@acme.example", [], half, data))
        assert reply.startswith("451") and "no such user" in reply
        none = [("nobody@x.example", [])]
        assert relay.send(Outgoing("s@acme.example", [], none, data)).startswith("550 5.1.1")
        assert relay.send(Outgoing("s@acme.example", [], [("c@x.example", [])], data)).startswith(
            "250"
        )
        assert [rcpts for _, rcpts, _ in handler.delivered] == [
            ["a@x.example", "b@x.example"], ["c@x.example"],
        ]  # fmt: skip
        assert relay.sent == 5  # all on one connection
        # DATA goes with MAIL and RCPT when there is one recipient (its 354 then says
        # the recipient was accepted), never with several (one refused must stop all).
        assert handler.data_with_envelope == [False, True, False, True, True]
        # A line break in an address or a parameter never adds a command of its own:
        # addresses are requoted, and a parameter that would be passed on is refused.
        for params in (["BODY=8BITMIME\r\nRCPT TO:<e@y.example>"], ["X=1\rRCPT TO:<e@y.example>"]):
            with pytest.raises(ValueError, match="newline"):
                relay.send(Outgoing("s@acme.example", params, [("a@x.example", [])], data))
        for smuggled in (
            Outgoing("s@acme.example", [], [("a@x.example>\r\nRCPT TO:<e@y.example", [])], data),
            Outgoing("s@acme.example\nRCPT TO:<e@y.example>", [], [("a@x.example", [])], data),
        ):
            assert relay.send(smuggled).startswith("250")
        assert all("e@y.example" not in rcpts for _, rcpts, _ in handler.delivered)
    finally:
        relay.close()
        controller.stop()


def test_an_exim_that_pipelines_up_to_its_fin_gets_every_reply() -> None:
    """The proxy (a real server on a loopback port, relaying to the test sink) as Exim
    meets it when it announces PIPELINING: MAIL, RCPT and DATA in one write, and the
    final dot, QUIT and the client's FIN together (what Exim's transport sends). Every
    command gets its reply, in order, and the message is delivered once. A FIN in the
    middle of the text ends the session: nothing is delivered and no reply claims the
    message."""
    from aiosmtpd.controller import Controller

    from sendwarden.proxy.relay import NextHop, RelayPool
    from tests.support.ports import free_port
    from tests.support.sink import SmtpSink

    sink = SmtpSink().start()
    handler = ProxyHandler.__new__(ProxyHandler)  # its hooks, without Redis behind them

    class Generations:
        retired_in_use = 0

        def lease(self) -> tuple[object, Callable[[], None]]:
            return Pipeline(settings_from_mapping({}), []), lambda: None

    handler.generations = Generations()  # type: ignore[assignment]
    handler.postfix_mode = False
    handler.settings = settings_from_mapping({})
    handler.secret = SECRET
    handler.executor = concurrent.futures.ThreadPoolExecutor(2)
    handler.relays = RelayPool(NextHop("127.0.0.1", sink.port, timeout=10))

    class ProxyController(Controller):
        def factory(self) -> ProxySMTP:
            return ProxySMTP(handler, hostname="proxy.test", auth_required=True,
                             auth_require_tls=False, auth_exclude_mechanism=["PLAIN", "LOGIN"],
                             enable_SMTPUTF8=True, decode_data=False, loop=self.loop)  # fmt: skip

    controller = ProxyController(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    token = base64.b64encode(f"\0exim\0{SECRET}".encode()).decode()
    identity = exim_value("esmtpa", "alice@acme.example", "", "192.0.2.7")
    envelope = (f"MAIL FROM:<alice@acme.example> AUTH={identity}\r\n"
                "RCPT TO:<bob@remote.example>\r\nDATA\r\n").encode()  # fmt: skip
    text = b"From: <alice@acme.example>\r\nSubject: s\r\n\r\nbody\r\n"

    def session(rest: bytes) -> list[bytes]:
        """Every reply line the proxy sends until it closes the connection."""
        import socket

        with socket.create_connection(("127.0.0.1", controller.port), timeout=10) as sock:
            reader = sock.makefile("rb")

            def reply() -> list[bytes]:
                lines = [reader.readline()]
                while lines[-1][3:4] == b"-":
                    lines.append(reader.readline())
                return lines

            assert reply()[0].startswith(b"220")
            sock.sendall(b"EHLO exim.test\r\n")
            assert b"250-PIPELINING\r\n" in reply()
            sock.sendall(f"AUTH X-SENDWARDEN {token}\r\n".encode())
            assert reply()[0].startswith(b"235")
            sock.sendall(envelope)
            assert [reply()[0][:3] for _ in range(3)] == [b"250", b"250", b"354"]
            sock.sendall(rest)
            sock.shutdown(socket.SHUT_WR)
            return [line for line in iter(reader.readline, b"")]

    try:
        replies = session(text + b".\r\nQUIT\r\n")
        assert [line[:4] for line in replies] == [b"250 ", b"221 "]
        assert [list(m.rcpt_tos) for m in sink.wait_for(1, timeout=10)] == [["bob@remote.example"]]
        assert session(text) == []  # no final dot: the text never counts as a message
        time.sleep(0.3)
        assert len(sink.messages) == 1
    finally:
        controller.stop()
        handler.executor.shutdown()
        handler.relays.close()
        sink.stop()


def test_the_reply_to_the_text_is_read_on_the_event_loop_and_a_lost_one_is_sent_again() -> None:
    """Against a real SMTP server: after the text, the next hop's reply is read on an
    event loop (a multi-line reply whole, as smtplib reads it), and the connection
    then carries the next message with smtplib's blocking reads as before. A next
    hop that closes the connection instead of replying gives ``None`` (the proxy then
    sends the message again on another connection), never a reply it did not send."""
    from aiosmtpd.controller import Controller

    from sendwarden.proxy.relay import NextHop, Relay
    from tests.support.ports import free_port

    class Handler(PipeliningHop):
        def __init__(self) -> None:
            self.delivered: list[bytes] = []

        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            if b"slow" in (envelope.original_content or b""):
                await asyncio.sleep(0.5)
            if b"drop me" in (envelope.original_content or b""):
                assert server.transport is not None
                server.transport.close()  # gone before its reply
                return "250 never sent"
            self.delivered.append(envelope.original_content or b"")
            return "250-2.0.0 queued\r\n250 as 1234"

    handler = Handler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    relay = Relay(NextHop("127.0.0.1", controller.port, timeout=10))

    def message(text: bytes) -> Outgoing:
        return Outgoing("s@acme.example", [], [("a@x.example", [])], b"Subject: s\r\n\r\n" + text)

    try:
        first = message(b"one\r\n")
        assert relay.begin(first) is None and relay.send_text(first.data)
        assert asyncio.run(relay.reply()) == "250 2.0.0 queued as 1234"
        assert relay.send(message(b"two\r\n")) == "250 2.0.0 queued as 1234"  # blocking again
        lost = message(b"drop me\r\n")
        assert relay.begin(lost) is None and relay.send_text(lost.data)
        assert asyncio.run(relay.reply()) is None
        assert not relay.connected
        assert relay.send(message(b"three\r\n")).startswith("250")  # a new connection
        # The MTA gone while the reply is awaited: that connection is not used again
        # (its late reply would be taken for the next message's).
        slow = message(b"slow\r\n")
        assert relay.begin(slow) is None and relay.send_text(slow.data)

        async def give_up() -> None:
            waiting = asyncio.ensure_future(relay.reply())
            await asyncio.sleep(0.1)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting

        asyncio.run(give_up())
        assert not relay.connected
        assert relay.send(message(b"four\r\n")).startswith("250")
        assert [d.rsplit(b"\r\n\r\n", 1)[1] for d in handler.delivered] == [
            b"one\r\n", b"two\r\n", b"three\r\n", b"four\r\n",
        ]  # fmt: skip
    finally:
        relay.close()
        controller.stop()
