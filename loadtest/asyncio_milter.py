"""PROTOTYPE (benchmark only): the milter protocol served by one asyncio (uvloop) thread
instead of libmilter's threads, driving the SAME pymilter-based adapter classes.

    python -m loadtest.asyncio_milter sendwarden CONFIG
    python -m loadtest.asyncio_milter noop SOCKET STEPS

What it measures: the cost of libmilter's thread-per-callback structure (a GIL
acquisition per callback, a poll + 2 reads per packet, futex hand-overs between
sessions) against a single-threaded event loop that parses the packets in Python.
Every callback runs on the loop thread, so a blocking call (Redis, a database)
holds up every other session meanwhile: fine for a measurement on loopback, not a
production design as it stands. Not implemented: libmilter's idle timeout, SKIP,
body replacement, quarantine, progress, multi-line replies.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys
from typing import Any

import Milter

# Milter protocol version 6 (libmilter's mfdef.h).
VERSION = 6
STAGE_OF_COMMAND = {b"C": 0, b"H": 1, b"M": 2, b"R": 3, b"T": 4, b"E": 5, b"N": 6}
REPLY_OF_CODE = {
    Milter.CONTINUE: b"c",
    Milter.REJECT: b"r",
    Milter.DISCARD: b"d",
    Milter.ACCEPT: b"a",
    Milter.TEMPFAIL: b"t",
    Milter.SKIP: b"s",
}
#: Longest packet accepted (libmilter's limit is of this order; Postfix's largest body
#: chunk is 1 MB): a longer announced length is bad input and ends the connection.
MAX_PACKET = 2 * 1024 * 1024
FAMILIES = {b"4": socket.AF_INET, b"6": socket.AF_INET6, b"L": socket.AF_UNIX}


def _packet(code: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + code + data


def _name(symbol: str) -> str:
    return symbol[1:-1] if symbol.startswith("{") and symbol.endswith("}") else symbol


class Context:
    """What pymilter's milterContext offers the adapter, over one connection."""

    __slots__ = ("edits", "macros", "priv", "reply", "symlists")

    def __init__(self) -> None:
        self.macros: list[dict[str, str] | None] = [None] * 7
        self.priv: Any = None
        self.symlists: dict[int, str] = {}
        self.reply: bytes | None = None
        self.edits: list[bytes] = []

    def setpriv(self, priv: Any) -> None:
        self.priv = priv

    def getpriv(self) -> Any:
        return self.priv

    def getsymval(self, symbol: str) -> str | None:
        name = _name(symbol)
        for stage in self.macros:  # libmilter's order: connect, helo, mail, rcpt, ...
            if stage is not None and name in stage:
                return stage[name]
        return None

    def setsymlist(self, stage: int, macros: str | bytes) -> int:
        self.symlists[stage] = macros.decode() if isinstance(macros, bytes) else macros
        return Milter.CONTINUE

    def setreply(self, rcode: str, xcode: str | None, msg: str | None, *lines: str) -> int:
        xcode = xcode or (f"{rcode[0]}.0.0")
        self.reply = f"{rcode} {xcode} {msg or ''}".encode("utf-8", "surrogateescape")
        return Milter.CONTINUE

    def addheader(self, field: str, value: str, index: int = -1) -> int:
        data = f"{field}\0{value}\0".encode("utf-8", "surrogateescape")
        if index < 0:
            self.edits.append(_packet(b"h", data))
        else:
            self.edits.append(_packet(b"i", struct.pack(">I", index) + data))
        return Milter.CONTINUE

    def chgheader(self, field: str, index: int, value: str) -> int:
        data = struct.pack(">I", index) + f"{field}\0{value or ''}\0".encode(
            "utf-8", "surrogateescape"
        )
        self.edits.append(_packet(b"m", data))
        return Milter.CONTINUE

    def delrcpt(self, recipient: str) -> int:
        self.edits.append(_packet(b"-", recipient.encode("utf-8", "surrogateescape") + b"\0"))
        return Milter.CONTINUE

    def addrcpt(self, recipient: str, params: str | None = None) -> int:
        self.edits.append(_packet(b"+", recipient.encode("utf-8", "surrogateescape") + b"\0"))
        return Milter.CONTINUE


class MilterConnection(asyncio.Protocol):
    """One MTA connection: packets in, the adapter's callbacks, replies out."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.ctx = Context()
        self.transport: Any = None
        self.out: list[bytes] = []
        self.negotiated: bytes | None = None  # the MTA's options, again after a 'K'

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._close()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        offset = 0
        end = len(buffer)
        while end - offset >= 5:
            (length,) = struct.unpack_from(">I", buffer, offset)
            if not 0 < length <= MAX_PACKET:
                self.transport.close()
                return
            if end - offset - 4 < length:
                break
            command = bytes(buffer[offset + 4 : offset + 5])
            payload = bytes(buffer[offset + 5 : offset + 4 + length])
            offset += 4 + length
            if not self._dispatch(command, payload):
                del buffer[:offset]
                if self.transport is not None:
                    if self.out:
                        self.transport.write(b"".join(self.out))
                    self.transport.close()
                return
        del buffer[:offset]
        if self.out and self.transport is not None:
            self.transport.write(b"".join(self.out))
            self.out.clear()

    # -- commands ---------------------------------------------------------------------

    def _dispatch(self, command: bytes, data: bytes) -> bool:
        ctx = self.ctx
        milter = ctx.priv
        if command == b"D":
            stage = STAGE_OF_COMMAND.get(data[:1])
            if stage is not None:
                parts = data[1:].split(b"\0")
                ctx.macros[stage] = {
                    _name(parts[i].decode("latin-1")): parts[i + 1].decode("utf-8", "replace")
                    for i in range(0, len(parts) - 1, 2)
                }
            return True
        if command == b"O":
            self._negotiate(data)
            return True
        if command == b"C":
            if ctx.priv is None and self.negotiated is not None:
                self._negotiate(self.negotiated, reply=False)
            host, _, rest = data.partition(b"\0")
            family = FAMILIES.get(rest[:1], 0)
            address: Any = None
            if family in (socket.AF_INET, socket.AF_INET6):
                (port,) = struct.unpack(">H", rest[1:3])
                text = rest[3:].rstrip(b"\0").decode("ascii", "replace")
                address = (text, port) if family == socket.AF_INET else (text, port, 0, 0)
            elif family == socket.AF_UNIX:
                address = rest[3:].rstrip(b"\0").decode("utf-8", "replace")
            self._reply(
                Milter.connect_callback(ctx, host.decode("utf-8", "replace"), family, address)
            )
            return True
        if milter is None:  # no connect yet: nothing to call
            if command not in (b"Q", b"K", b"A"):
                self.out.append(_packet(b"c"))
            return command != b"Q"
        if command == b"M":
            for stage in range(3, 7):
                ctx.macros[stage] = None
            self._reply(milter.envfrom_bytes(*data.rstrip(b"\0").split(b"\0")))
        elif command == b"R":
            self._reply(milter.envrcpt_bytes(*data.rstrip(b"\0").split(b"\0")))
        elif command == b"L":
            name, _, value = data.partition(b"\0")
            self._reply(
                milter.header_bytes(name.decode("ascii", "surrogateescape"), value.rstrip(b"\0"))
            )
        elif command == b"B":
            self._reply(milter.body(data))
        elif command == b"E":
            if data:
                milter.body(data)
            rc = milter.eom()
            self.out.extend(ctx.edits)
            ctx.edits.clear()
            self._reply(rc)
        elif command == b"T":
            self._reply(milter.data())
        elif command == b"N":
            self._reply(milter.eoh())
        elif command == b"H":
            self._reply(milter.hello(data.rstrip(b"\0").decode("utf-8", "replace")))
        elif command == b"A":
            milter.abort()
            for stage in range(2, 7):
                ctx.macros[stage] = None
        elif command == b"U":
            self._reply(milter.unknown(data.rstrip(b"\0")))
        elif command == b"K":  # quit, a new connection follows on this socket
            self._close()
            self.ctx = Context()
        elif command == b"Q":
            self._close()
            return False
        else:
            self.out.append(_packet(b"c"))
        return True

    def _negotiate(self, data: bytes, reply: bool = True) -> None:
        self.negotiated = data
        version, actions, protocol = struct.unpack(">III", data[:12])
        ctx = self.ctx
        milter = Milter.factory()
        milter._setctx(ctx)
        options = [actions, protocol, 0, 0]
        rc = milter.negotiate(options)
        if rc != Milter.CONTINUE:
            options = [actions, protocol, 0, 0]
        answer = struct.pack(">III", min(version, VERSION), options[0], options[1])
        for stage, macros in ctx.symlists.items():
            answer += struct.pack(">I", stage) + macros.encode() + b"\0"
        if reply:
            self.out.append(_packet(b"O", answer))

    def _reply(self, rc: int) -> None:
        if rc == Milter.NOREPLY:
            return
        ctx = self.ctx
        if ctx.reply is not None and rc in (Milter.REJECT, Milter.TEMPFAIL):
            self.out.append(_packet(b"y", ctx.reply + b"\0"))
        else:
            self.out.append(_packet(REPLY_OF_CODE.get(rc, b"t")))
        ctx.reply = None

    def _close(self) -> None:
        milter, self.ctx.priv = self.ctx.priv, None
        if milter is not None:
            try:
                milter.close()
            finally:
                milter._setctx(None)


async def serve(spec: str) -> None:
    loop = asyncio.get_running_loop()
    scheme, _, rest = spec.partition(":")
    if scheme in ("unix", "local"):
        if os.path.exists(rest):
            os.unlink(rest)
        server = await loop.create_unix_server(MilterConnection, rest, backlog=128)
        os.chmod(rest, 0o666)
    else:
        port, _, host = rest.partition("@")
        server = await loop.create_server(
            MilterConnection, host or "127.0.0.1", int(port), backlog=128
        )
    print(f"asyncio milter listening on {spec}", flush=True)
    async with server:
        await server.serve_forever()


def run(argv: list[str]) -> int:
    """Not ``main``: ``python -m loadtest`` runs every module's ``main()`` as a benchmark."""
    import uvloop

    if argv[0] == "noop":
        from loadtest import noop_pymilter

        socket_spec, steps = argv[1], argv[2]
        noop_pymilter.STEPS = int(steps, 0)
        Milter.factory = noop_pymilter.NoopMilter
    else:
        from sendwarden.config import load_settings
        from sendwarden.decisionlog import configure_logging
        from sendwarden.milter.adapter import SendwardenMilter
        from sendwarden.milter.server import MilterServer, tune_garbage_collector

        settings = load_settings(argv[1])
        configure_logging(settings.log.level, settings.log.decisions)
        server = MilterServer(argv[1], settings)  # the pipeline source the adapter leases
        server.runtime.open_stores_soon()  # at start, as the milter's own serve() does
        Milter.factory = SendwardenMilter
        socket_spec = settings.milter.socket
        tune_garbage_collector()
    uvloop.run(serve(socket_spec))
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
