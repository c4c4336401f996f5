"""The benchmark's SMTP client: SASL PLAIN logins, one message per connection, many
sessions at once on one asyncio loop. smtp-source cannot log in, and a sendwarden
that sees no login skips every account-dependent path."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
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


async def send_one(port: int, message: Message) -> float:
    """Deliver one message on a new connection; the seconds from "." to its 250."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _expect(reader, b"220", "greeting")
        writer.write(b"EHLO client.example\r\n")
        await _expect(reader, b"250", "EHLO")
        token = base64.b64encode(f"\0{message.login}\0{message.password}".encode()).decode()
        writer.write(f"AUTH PLAIN {token}\r\n".encode())
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
        await _expect(reader, b"221", "QUIT")
        return latency
    finally:
        writer.close()
        await writer.wait_closed()


async def _run(port: int, count: int, sessions: int, make: Callable[[int], Message]) -> Run:
    run = Run()
    numbers = iter(range(count))

    async def session() -> None:
        for number in numbers:  # shared: each message is sent once, by whichever is free
            run.end_of_data.append(await send_one(port, make(number)))

    started = time.perf_counter()
    await asyncio.gather(*(session() for _ in range(sessions)))
    run.elapsed = time.perf_counter() - started
    return run


def send_many(port: int, count: int, sessions: int, make: Callable[[int], Message]) -> Run:
    """Send ``count`` messages (``make(i)``) over ``sessions`` parallel connections."""
    return asyncio.run(_run(port, count, sessions, make))
