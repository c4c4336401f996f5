"""The plain-mailbox fast path of the sender headers' parse against the strict stdlib
path, on generated evasions: whatever the fast path reads, the stdlib path reads the
same (same display name, address and domain); everything else it leaves to the stdlib
path, so a header it cannot read alike is judged exactly as before.
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from sendwarden.policy.identity import (
    SENDER_HEADERS,
    Mailbox,
    MalformedHeader,
    _parse_with_stdlib,
    parse_mailboxes,
    plain_mailbox,
)


def stdlib(name: str, unfolded: str) -> tuple[Mailbox, ...] | str:
    try:
        return _parse_with_stdlib(name, unfolded)
    except MalformedHeader as error:
        return f"refused: {error}"


def agrees(name: str, value: str) -> bool:
    """Checks one value; True when the fast path read it (so the test can tell it ran)."""
    unfolded = value.strip()
    fast = plain_mailbox(unfolded)
    if fast is None:
        return False
    assert stdlib(name, unfolded) == fast, (name, value)
    return True


# Pieces a hostile sender mixes into a From header: specials, quotes, comments, encoded
# words, dots, IDNA, look-alikes, full-width signs, control and invisible characters.
PIECES = [
    "a", "Z", "0", "9", "-", "_", "+", ".", "..", " ", "  ", "\t", "@", "<", ">", ",", ";",
    ":", '"', "\\", "(", ")", "[", "]", "=?utf-8?q?x?=", "=?", "?=", "xn--", "xn--bcher-kva",
    "\u00fc", "\u0430", "\uff20", "\u200b", "\u202e", "\x00", "\x7f", "\n", "\r", "'", "!",
    "#", "$", "%", "&", "*", "/", "=", "?", "^", "`", "{", "|", "}", "~", "example",
    "acme.example", "mailer-daemon", "postmaster@", "\u0131", "K", "\u212a",
]  # fmt: skip
NOISE = st.lists(st.sampled_from(PIECES), max_size=14).map("".join)
WORD = st.text(alphabet="aZ09-_+.\u00fc\u212a", min_size=0, max_size=6) | st.text(
    alphabet="aZ0-_+.()<>[]\\\"=?,;:@!#$%&'*/^`{|}~ \t\u00fc\u0131", min_size=1, max_size=4
)
LABEL = st.text(alphabet="aZ09-\u00fc", min_size=0, max_size=8) | st.sampled_from(
    ["xn--bcher-kva", "xn--", "a" * 63, "a" * 64, "1", "-a", "a-"]
)
DOMAIN = st.lists(LABEL, min_size=1, max_size=4).map(".".join)
LOCAL = st.lists(WORD, min_size=1, max_size=3).map(".".join)
PHRASE = st.lists(WORD, max_size=4).map(" ".join)
NEAR_PLAIN = st.one_of(
    st.builds(lambda p, lo, d: f"{p} <{lo}@{d}>", PHRASE, LOCAL, DOMAIN),
    st.builds(lambda p, lo, d: f"{p}<{lo}@{d}>", PHRASE, LOCAL, DOMAIN),
    st.builds(lambda lo, d: f"{lo}@{d}", LOCAL, DOMAIN),
    st.builds(lambda lo, d: f"<{lo}@{d}>", LOCAL, DOMAIN),
    st.builds(
        lambda a, b, c: a + b + c, NOISE, st.sampled_from(["a <b@c.example>", "b@c.example"]), NOISE
    ),
)


@settings(max_examples=1500)
@given(st.sampled_from(SENDER_HEADERS), NEAR_PLAIN | NOISE)
@example("From", "User 5 <user5@d5.example>")
@example("From", "user5@D5.Example")
@example("Sender", "<a.b+c@xn--bcher-kva.example>")
@example("From", "a@b.example.")  # a trailing dot: not plain, the stdlib decides
@example("From", "A <a@" + "b" * 64 + ".example>")  # a label too long
def test_the_fast_path_reads_what_the_stdlib_reads(name: str, value: str) -> None:
    agrees(name, value)


@given(
    st.sampled_from(SENDER_HEADERS),
    st.lists(st.text("abcXYZ019", min_size=1, max_size=5), max_size=3).map(" ".join),
    st.text("abc019_+-", min_size=1, max_size=8),
    st.lists(st.text("abcxyz019", min_size=1, max_size=6), min_size=2, max_size=3).map(".".join),
)
def test_the_fast_path_does_read_plain_mailboxes(
    name: str, phrase: str, local: str, domain: str
) -> None:
    """Not vacuous: the plain forms are read by the fast path, and alike."""
    assert agrees(name, f"{local}@{domain}")
    assert agrees(name, f"<{local}@{domain}>")
    assert agrees(name, f"{phrase} <{local}@{domain}>" if phrase else f"<{local}@{domain}>")


def test_parse_mailboxes_still_refuses_what_it_refused() -> None:
    refused = ("", "   ", "a@b", "<a@b.example", "a@b.example, c@d.example x", "G: a@b.example;")
    for value in refused:
        try:
            result = parse_mailboxes.__wrapped__("From", value)
        except MalformedHeader:
            continue
        assert plain_mailbox(value.strip()) is None, (value, result)
