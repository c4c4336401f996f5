"""The benchmark's SMTP client: SASL PLAIN logins, one message per connection, many
sessions at once on one asyncio loop. smtp-source cannot log in, and a sendwarden
that sees no login skips every account-dependent path.

``fin_after_quit``: end each connection the way MTAs do (Exim's smtp transport,
Postfix's ``smtp_skip_quit_response``): QUIT and the TCP FIN together, then the 221.
Exim 4.94-4.98 holds its 221 back for 200 ms after QUIT unless the client has closed
its side (Exim bug 3142, fixed in 4.99), so a client that waits for the 221 first
(smtp-source, smtplib, most MUAs) measures that pause, not Exim.

    python -m loadtest.smtp_client --port P [--count N --sessions S --fin-after-quit]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Message:
    """One SMTP transaction: who logs in, the envelope, and the DATA text."""

    login: str
    password: str
    mail_from: str
    recipients: tuple[str, ...]
    data: bytes  # dot-stuffed, CRLF line ends, without the final "."


@dataclass
class Run:
    """What one batch measured: wall time and each message's end-of-data latency."""

    elapsed: float = 0.0
    end_of_data: list[float] = field(default_factory=list)


class SmtpFailure(RuntimeError):
    """The server answered something other than what a clean delivery gets."""


async def _expect(reader: asyncio.StreamReader, code: bytes, what: str) -> None:
    while True:
        line = await reader.readline()
        if not line.startswith(code):
            raise SmtpFailure(f"{what}: {line!r}")
        if line[3:4] != b"-":
            return


async def send_one(port: int, message: Message, fin_after_quit: bool = False) -> float:
    """Deliver one message on a new connection; the seconds from "." to its 250.
    No login when ``message.login`` is empty."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _expect(reader, b"220", "greeting")
        writer.write(b"EHLO client.example\r\n")
        await _expect(reader, b"250", "EHLO")
        if message.login:
            token = base64.b64encode(f"\0{message.login}\0{message.password}".encode())
            writer.write(b"AUTH PLAIN " + token + b"\r\n")
            await _expect(reader, b"235", "AUTH")
        writer.write(f"MAIL FROM:<{message.mail_from}>\r\n".encode())
        await _expect(reader, b"250", "MAIL")
        for recipient in message.recipients:
            writer.write(f"RCPT TO:<{recipient}>\r\n".encode())
            await _expect(reader, b"250", f"RCPT {recipient}")
        writer.write(b"DATA\r\n")
        await _expect(reader, b"354", "DATA")
        writer.write(message.data)
        started = time.perf_counter()
        writer.write(b".\r\n")
        await _expect(reader, b"250", "end of data")
        latency = time.perf_counter() - started
        writer.write(b"QUIT\r\n")
        if fin_after_quit:
            writer.write_eof()
        await _expect(reader, b"221", "QUIT")
        return latency
    finally:
        writer.close()
        await writer.wait_closed()


async def _run(
    port: int, count: int, sessions: int, make: Callable[[int], Message], fin_after_quit: bool
) -> Run:
    run = Run()
    numbers = iter(range(count))

    async def session() -> None:
        for number in numbers:  # shared: each message is sent once, by whichever is free
            run.end_of_data.append(await send_one(port, make(number), fin_after_quit))

    started = time.perf_counter()
    await asyncio.gather(*(session() for _ in range(sessions)))
    run.elapsed = time.perf_counter() - started
    return run


def send_many(
    port: int, count: int, sessions: int, make: Callable[[int], Message],
    fin_after_quit: bool = False,
) -> Run:  # fmt: skip
    """Send ``count`` messages (``make(i)``) over ``sessions`` parallel connections."""
    return asyncio.run(_run(port, count, sessions, make, fin_after_quit))


def plain_message(sender: str, recipient: str, size: int) -> Message:
    """A message of about ``size`` bytes of body text, no login (as smtp-source sends)."""
    line = b"x" * 70 + b"\r\n"
    head = f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: benchmark\r\n\r\n".encode()
    return Message("", "", sender, (recipient,), head + line * max(1, size // len(line)))


def cli(argv: Sequence[str]) -> int:
    """Run as its own process, so that the client does not share a GIL with the sink."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--from", dest="sender", default="alice@acme.example")
    parser.add_argument("--to", dest="recipient", default="bob@remote.example")
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--fin-after-quit", action="store_true")
    args = parser.parse_args(list(argv))
    message = plain_message(args.sender, args.recipient, args.size)
    run = send_many(args.port, args.count, args.sessions, lambda _: message,
                    args.fin_after_quit)  # fmt: skip
    print(f"{args.count} messages in {run.elapsed:.3f} s")
    return 0


if __name__ == "__main__":  # not main(): python -m loadtest runs every main()
    sys.exit(cli(sys.argv[1:]))
