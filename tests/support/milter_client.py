"""The MTA's side of the milter protocol (version 6), for tests that talk to a milter
directly: the packets Postfix sends, and the replies read back as bytes, so two
milter transports can be held to the same answers."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable

import Milter

#: Replies that end a command's answer; modifications ('h', 'i', 'm', '-', ...) come first.
FINAL = frozenset(b"cartdys")
#: Commands answered only when their no-reply flag was not negotiated.
NO_REPLY_FLAG = {
    b"C": Milter.P_NR_CONN,
    b"H": Milter.P_NR_HELO,
    b"M": Milter.P_NR_MAIL,
    b"R": Milter.P_NR_RCPT,
    b"T": Milter.P_NR_DATA,
    b"L": Milter.P_NR_HDR,
    b"N": Milter.P_NR_EOH,
    b"B": Milter.P_NR_BODY,
    b"U": Milter.P_NR_UNKN,
}
#: Every action and protocol option Postfix 3.7 offers (milter_protocol = 6).
OFFERED_ACTIONS = 0x1FF
OFFERED_PROTOCOL = 0x1FFFFF


def packet(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + command + data


def strings(*values: str | bytes) -> bytes:
    """NUL-terminated strings, as the protocol carries them."""
    return b"".join((v.encode() if isinstance(v, str) else v) + b"\0" for v in values)


class MilterClient:
    """One MTA connection to a milter; :meth:`command` returns its reply packets."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.protocol = 0
        self.actions = 0
        self.symlists: dict[int, bytes] = {}

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> MilterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def negotiate(self, actions: int = OFFERED_ACTIONS, protocol: int = OFFERED_PROTOCOL) -> bytes:
        self.sock.sendall(packet(b"O", struct.pack(">III", 6, actions, protocol)))
        code, data = self.read()
        assert code == b"O", (code, data)
        _, self.actions, self.protocol = struct.unpack(">III", data[:12])
        rest = data[12:]
        while rest:
            (stage,) = struct.unpack(">I", rest[:4])
            macros, _, rest = rest[4:].partition(b"\0")
            self.symlists[stage] = macros
        return data

    def macros(self, stage: bytes, values: dict[str, str]) -> None:
        pairs = [item for pair in values.items() for item in pair]
        self.sock.sendall(packet(b"D", stage + strings(*pairs)))

    def command(self, command: bytes, data: bytes = b"") -> list[tuple[bytes, bytes]]:
        """Send one command; its reply packets (none where no reply was negotiated)."""
        self.sock.sendall(packet(command, data))
        flag = NO_REPLY_FLAG.get(command)
        if command in (b"A", b"Q", b"K") or (flag is not None and self.protocol & flag):
            return []
        replies = []
        while True:
            code, body = self.read()
            replies.append((code, body))
            if code[0] in FINAL:
                return replies

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> tuple[bytes, bytes]:
        head = self._exactly(4)
        (length,) = struct.unpack(">I", head)
        body = self._exactly(length)
        return body[:1], body[1:]

    def closed_by_milter(self) -> bool:
        """True when the milter closed the connection (reads EOF)."""
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def _exactly(self, size: int) -> bytes:
        chunks: list[bytes] = []
        while size:
            chunk = self.sock.recv(size)
            if not chunk:
                raise ConnectionError("milter closed the connection")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)


def connect_info(hostname: str, address: str, port: int) -> bytes:
    family = b"6" if ":" in address else b"4"
    return hostname.encode() + b"\0" + family + struct.pack(">H", port) + address.encode() + b"\0"


def header_packets(headers: Iterable[tuple[str, str]]) -> list[bytes]:
    return [strings(name, value) for name, value in headers]
