"""The no-op proxy: the least an SMTP proxy on Exim's path can do, as the baseline of
``loadtest.proxy``. It speaks to Exim as ``sendwarden proxy`` does (banner, EHLO with
PIPELINING and DSN, AUTH X-SENDWARDEN, MAIL and RCPT answered as they come, the return
port's transaction opened at DATA on a connection reused for 10 messages, the text
passed on and the return port's reply given back, 221 at QUIT), and does nothing
else: no rule, no Redis, no worker thread, no aiosmtpd.

Between "Exim alone" and "Exim + sendwarden proxy", its row shows how much of the
proxy path's cost is Exim's own (the cutthrough to a proxy, a second reception with
its spool writes, a second delivery process) and how much is sendwarden's.

    python -m loadtest.noop_proxy --listen PORT --next-hop PORT --secret-file FILE
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hmac
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop

# What sendwarden's relay and the Exim rigs use, so that both proxies take one path.
from sendwarden.proxy.relay import MECHANISM, MESSAGES_PER_CONNECTION
from tests.support.exim import PROXY_LOGIN, RETURN_LOGIN

EHLO_REPLY = (
    b"250-noop-proxy\r\n250-PIPELINING\r\n250-DSN\r\n"
    + f"250-AUTH {MECHANISM}\r\n".encode()
    + b"250 SIZE 104857600\r\n"
)


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    """One SMTP reply, all its lines."""
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("the next hop closed the connection")
        lines.append(line)
        if line[3:4] != b"-":
            return b"".join(lines)


def path_of(line: bytes) -> bytes:
    """``<address>`` of a MAIL or RCPT line, without its parameters."""
    return line.partition(b":")[2].strip().partition(b">")[0] + b">"


def auth_token(login: str, secret: str) -> str:
    return base64.b64encode(f"\0{login}\0{secret}".encode()).decode()


class ReturnPort:
    """Connections to Exim's return port, each reused for a few messages."""

    def __init__(self, port: int, secret: str) -> None:
        self.port = port
        self.token = auth_token(RETURN_LOGIN, secret)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, int]] = []

    async def open(self, mail: bytes, recipients: list[bytes]) -> tuple[
        asyncio.StreamReader, asyncio.StreamWriter, int
    ]:  # fmt: skip
        """A connection whose transaction for this envelope waits for the text (354)."""
        if self.idle:
            reader, writer, sent = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            await read_reply(reader)
            writer.write(b"EHLO noop-proxy\r\n")
            await read_reply(reader)
            writer.write(f"AUTH {MECHANISM} {self.token}\r\n".encode())
            if not (await read_reply(reader)).startswith(b"235"):
                raise ConnectionError("the return port refused the login")
            sent = 0
        envelope = [b"MAIL FROM:" + mail] + [b"RCPT TO:" + rcpt for rcpt in recipients]
        writer.write(b"".join(line + b"\r\n" for line in [*envelope, b"DATA"]))
        for _ in envelope:
            await read_reply(reader)
        answer = await read_reply(reader)
        if not answer.startswith(b"354"):
            raise ConnectionError(f"the return port answered DATA with {answer!r}")
        return reader, writer, sent

    def done(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sent: int) -> None:
        if sent + 1 < MESSAGES_PER_CONNECTION:
            self.idle.append((reader, writer, sent + 1))
        else:
            writer.write(b"QUIT\r\n")
            writer.close()


async def serve_mta(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hop: ReturnPort, token: str
) -> None:
    """One connection from Exim: every command answered, nothing judged."""
    writer.write(b"220 noop-proxy ESMTP\r\n")
    mail, recipients = b"<>", []
    try:
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                writer.write(EHLO_REPLY)
            elif verb == b"AUTH":
                given = line.split()[-1].decode("ascii", "replace")
                good = hmac.compare_digest(given, token)
                writer.write(b"235 2.7.0 OK\r\n" if good else b"535 5.7.8 No\r\n")
            elif verb == b"MAIL":
                mail, recipients = path_of(line), []
                writer.write(b"250 2.1.0 OK\r\n")
            elif verb == b"RCPT":
                recipients.append(path_of(line))
                writer.write(b"250 2.1.5 OK\r\n")
            elif verb == b"DATA":
                hop_reader, hop_writer, sent = await hop.open(mail, recipients)
                writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                hop_writer.write(await reader.readuntil(b"\r\n.\r\n"))
                writer.write(await read_reply(hop_reader))
                hop.done(hop_reader, hop_writer, sent)
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                break
            elif verb == b"RSET":
                writer.write(b"250 2.0.0 OK\r\n")
            else:
                writer.write(b"502 5.5.1 Not implemented\r\n")
    except (ConnectionError, asyncio.IncompleteReadError) as error:
        print(f"noop proxy: {error}", file=sys.stderr, flush=True)
    finally:
        writer.close()


async def serve(listen: int, next_hop: int, secret: str) -> None:
    hop = ReturnPort(next_hop, secret)
    token = auth_token(PROXY_LOGIN, secret)
    server = await asyncio.start_server(
        lambda reader, writer: serve_mta(reader, writer, hop, token), "127.0.0.1", listen
    )
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--next-hop", type=int, required=True)
    parser.add_argument("--secret-file", type=Path, required=True)
    args = parser.parse_args(list(argv))
    secret = args.secret_file.read_text().strip()
    uvloop.run(serve(args.listen, args.next_hop, secret))  # sendwarden proxy's event loop


if __name__ == "__main__":
    main(sys.argv[1:])
