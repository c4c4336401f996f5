"""A message as the proxy holds it: header fields as the milter protocol would pass them,
the body in chunks, and the check's edits applied to the bytes that are relayed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sendwarden.policy.facts import MessageChanges

BODY_CHUNK = 65536


@dataclass(frozen=True, slots=True)
class RawHeader:
    name: str
    value: str  # unfolded as libmilter passes it: continuation lines kept, CRLF between
    raw: bytes  # the field as received, with its line ends


@dataclass(frozen=True, slots=True)
class SplitMessage:
    headers: tuple[RawHeader, ...]
    separator: bytes  # the empty line (b"" when the message has no body)
    body: bytes

    def body_chunks(self) -> Iterator[bytes]:
        for start in range(0, len(self.body), BODY_CHUNK):
            yield self.body[start : start + BODY_CHUNK]


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def split_message(data: bytes) -> SplitMessage:
    """Header fields and body. A line that is neither a field nor a continuation ends
    the header, as for an MTA (it becomes the first body line)."""
    headers: list[RawHeader] = []
    position = 0
    current: list[bytes] = []

    def flush() -> None:
        if current:
            raw = b"".join(current)
            name, _, value = raw.partition(b":")
            text = _decode(value).rstrip("\r\n")
            headers.append(RawHeader(_decode(name).strip(), text.removeprefix(" "), raw))
            current.clear()

    while position < len(data):
        end = data.find(b"\n", position)
        end = len(data) if end < 0 else end + 1
        line = data[position:end]
        if line in (b"\r\n", b"\n"):
            flush()
            return SplitMessage(tuple(headers), line, data[end:])
        if line[:1] in (b" ", b"\t") and current:
            current.append(line)
        elif b":" in line and not line[:1].isspace() and b" " not in line.split(b":", 1)[0]:
            flush()
            current.append(line)
        else:
            flush()
            return SplitMessage(tuple(headers), b"", data[position:])
        position = end
    flush()
    return SplitMessage(tuple(headers), b"", b"")


def apply_changes(message: SplitMessage, changes: MessageChanges) -> bytes:
    """The message to relay: fields removed (by name and 1-based index), fields added on
    top in order, the body untouched."""
    removed = {(name.lower(), index) for name, index in changes.remove_headers}
    seen: dict[str, int] = {}
    kept: list[bytes] = []
    for header in message.headers:
        key = header.name.lower()
        seen[key] = seen.get(key, 0) + 1
        if (key, seen[key]) not in removed:
            kept.append(header.raw)
    added = [f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")
             for name, value in changes.add_headers]  # fmt: skip
    return b"".join([*added, *kept, message.separator, message.body])
