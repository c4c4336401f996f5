"""RFC 5322 header text as a reader and a parser see it: tokens, comments, encoded words.

Pure helpers shared by the identity rules (what a mail client shows as the sender)
and the provider-header rules (what a Received or Authentication-Results header
claims). The grammar is the full one: comments nest, ``\\`` quotes the next
character in comments and quoted strings, folding whitespace is whitespace. Text
that never closes a comment or a quoted string is read to its end, the way the
lenient parsers of mail clients read it (the worse reading for a forger).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

_FOLD = re.compile(r"\r?\n(?=[ \t])")
# RFC 2047 encoded word; RFC 2231 section 5 adds an optional "*language" to the charset.
_ENCODED_WORD = re.compile(r"=\?([^?*\s]+)(?:\*[^?\s]*)?\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"(?<=\?=)\s+(?==\?)")  # RFC 2047 6.2: dropped between words
_SPECIALS = frozenset('()<>[]:;@\\,."')


class Kind(StrEnum):
    ATOM = "atom"  # atext run (dots kept inside: a dot-atom or a domain is one token)
    QUOTED = "quoted"  # quoted-string content, quoted pairs resolved
    COMMENT = "comment"  # comment content (nested comments inside), quoted pairs resolved
    LITERAL = "literal"  # [domain literal]
    SPECIAL = "special"  # one of < > : ; @ , and the like


@dataclass(frozen=True, slots=True)
class Token:
    kind: Kind
    text: str


def unfold(value: str) -> str:
    """A header value on one line (RFC 5322 2.2.3)."""
    return _FOLD.sub("", value)


def tokens(value: str) -> Iterator[Token]:
    """The tokens of structured header text, comments included as COMMENT tokens."""
    text = unfold(value)
    i, end = 0, len(text)
    while i < end:
        char = text[i]
        if char in " \t\r\n":
            i += 1
        elif char == "(":
            content, i = _comment(text, i + 1)
            yield Token(Kind.COMMENT, content)
        elif char == '"':
            content, i = _quoted(text, i + 1)
            yield Token(Kind.QUOTED, content)
        elif char == "[":
            close = text.find("]", i)
            close = end - 1 if close < 0 else close
            yield Token(Kind.LITERAL, text[i : close + 1])
            i = close + 1
        elif char in _SPECIALS and char != ".":
            yield Token(Kind.SPECIAL, char)
            i += 1
        else:
            start = i
            while (
                i < end
                and text[i] not in " \t\r\n"
                and (text[i] == "." or text[i] not in _SPECIALS)
            ):
                i += 1
            yield Token(Kind.ATOM, text[start:i])


def _comment(text: str, i: int) -> tuple[str, int]:
    """A comment's content from just after its "(" to its matching ")", nested ones
    with their parentheses; returns (content, index after the ")")."""
    return _delimited(text, i, ")", nests="(")


def _quoted(text: str, i: int) -> tuple[str, int]:
    """A quoted string's content from just after its opening quote."""
    return _delimited(text, i, '"')


def _delimited(text: str, i: int, close: str, nests: str = "") -> tuple[str, int]:
    """Text up to the ``close`` that matches (``nests`` opens one level more), quoted
    pairs resolved; (content, index after the close), or the rest when it never closes."""
    depth, out = 1, []
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if char == nests:
            depth += 1
        elif char == close:
            depth -= 1
            if depth == 0:
                return "".join(out), i + 1
        out.append(char)
        i += 1
    return "".join(out), i


def without_comments(value: str) -> list[Token]:
    """The tokens that carry meaning (comments are CFWS)."""
    return [token for token in tokens(value) if token.kind is not Kind.COMMENT]


def comments(value: str) -> list[str]:
    """Every comment's text, nested ones as their own entries too."""
    found: list[str] = []
    pending = [value]
    while pending:
        for token in tokens(pending.pop()):
            if token.kind is Kind.COMMENT:
                found.append(token.text)
                pending.append(token.text)
    return found


def decode_encoded_words(value: str) -> str:
    """RFC 2047 encoded words decoded wherever they appear (also inside quotes and
    comments, and glued to other text, as lenient clients show them), with the
    RFC 2231 language suffix (``=?utf-8*en?q?...?=``) understood. A word that does
    not decode is shown as written; an unknown charset is shown as Latin-1."""
    return _ENCODED_WORD.sub(_decode_word, _BETWEEN_WORDS.sub("", unfold(value)))


def _decode_word(match: re.Match[str]) -> str:
    charset, encoding, payload = match.group(1), match.group(2).upper(), match.group(3)
    try:
        if encoding == "B":
            raw = base64.b64decode(payload + "=" * (-len(payload) % 4))
        else:
            raw = re.sub(
                rb"=([0-9A-Fa-f]{2})",
                lambda hexed: bytes([int(hexed.group(1), 16)]),
                payload.replace("_", " ").encode("ascii", "surrogateescape"),
            )
    except (binascii.Error, ValueError):
        return match.group(0)
    try:
        return raw.decode(charset, "replace")
    except LookupError:
        return raw.decode("latin-1")
