"""DKIM and identity benchmark: ``python -m loadtest.dkim``.

Side by side, same machine, same run, interleaved rounds (median of each):

* body hash: sendwarden's streaming relaxed body hash, fed in the 64 KiB chunks
  Postfix hands a milter, against dkimpy canonicalizing and hashing the whole body
  at once (what ``dkim.sign`` does), in MB/s and in peak memory (tracemalloc);
* signing: sendwarden's signer (body streamed, then header hash and RSA-2048 through
  dkimpy) against ``dkim.sign`` over the whole message, in messages per second;
* identity: the From/Sender/forged-header check per message against the floor of
  parsing the From header once with the stdlib header registry (uncached), with a
  From seen before (the parse is cached) and one never seen.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import itertools
import re
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import dkim
from dkim.canonicalization import Relaxed

from sendwarden.checks.identity import IdentityCheck
from sendwarden.config import settings_from_mapping
from sendwarden.dkim.canon import RelaxedBodyHash
from sendwarden.dkim.keys import generate_key
from sendwarden.dkim.signer import DkimSigner, SigningKey
from sendwarden.policy.facts import Client, Transaction
from sendwarden.policy.identity import parse_mailboxes

CHUNK = 65535  # Postfix's milter body chunk
LINE = b"VGhlIHF1aWNrIGJyb3duIGZveCBqdW1wcyBvdmVyIHRoZSBsYXp5IGRvZyAgCg==  \r\n"
HEADERS = [
    ("From", "Alice Example <alice@acme.example>"),
    ("To", "Bob <bob@example.net>"),
    ("Subject", "Quarterly report"),
    ("Date", "Sun, 22 Nov 2026 07:27:09 +0000"),
    ("Message-Id", "<1@acme.example>"),
    ("MIME-Version", "1.0"),
    ("Content-Type", "text/plain"),
]
SETTINGS = settings_from_mapping(
    {
        "policy": {"provider_hostnames": ["mta.provider.example"]},
        "accounts": [
            {"id": "acme", "logins": ["alice@acme.example"], "domains": ["acme.example"]},
            {"id": "globex", "logins": ["bob@globex.example"], "domains": ["globex.example"]},
        ],
    }
)


def body_of(size: int) -> bytes:
    return (LINE * (size // len(LINE) + 1))[:size] + b"\r\n"


def dkimpy_body_hash(body: bytes) -> bytes:
    normalised = b"\r\n".join(re.split(rb"\r?\n", body))
    return hashlib.sha256(Relaxed.canonicalize_body(normalised)).digest()


def streamed_body_hash(body: bytes) -> bytes:
    hasher = RelaxedBodyHash()
    view = memoryview(body)
    for start in range(0, len(body), CHUNK):
        hasher.update(bytes(view[start : start + CHUNK]))
    return hasher.digest()


def transaction(headers: list[tuple[str, str]] = HEADERS) -> Transaction:
    txn = Transaction(
        client=Client(ipaddress.ip_address("203.0.113.5")),
        login="alice@acme.example",
        mail_from="alice@acme.example",
        queue_id="4AbC1",
    )
    txn.account, txn.account_source = SETTINGS.account("acme"), "login"
    txn.headers = list(headers)
    return txn


def rate(work: Callable[[], object], seconds: float) -> float:
    """Calls per second over about ``seconds``."""
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        work()
        count += 1
    return count / elapsed


def peak_memory(work: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def interleaved(contenders: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    results: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, measure in contenders.items():
            results[name].append(measure())
    return {name: statistics.median(values) for name, values in results.items()}


def table(title: str, unit: str, results: dict[str, float], baseline: str) -> None:
    print(f"\n{title}")
    print(f"  {'contender':<44} {unit:>14} {'vs baseline':>12}")
    for name, value in results.items():
        print(f"  {name:<44} {value:>14,.1f} {value / results[baseline]:>11.2f}x")


BASELINE = "dkimpy, whole body at once (baseline)"
FLOOR = "parse one From, stdlib, uncached (floor)"
STREAMED = "sendwarden, streamed in 64 KiB chunks"


def body_hash_round(body: bytes, rounds: int, seconds: float) -> None:
    assert streamed_body_hash(body) == dkimpy_body_hash(body)
    megabytes = len(body) / 1e6
    results = interleaved(
        {
            BASELINE: lambda: rate(lambda: dkimpy_body_hash(body), seconds) * megabytes,
            STREAMED: lambda: rate(lambda: streamed_body_hash(body), seconds) * megabytes,
        },
        rounds,
    )
    table(f"body hash, {len(body):,} byte body", "MB/s", results, BASELINE)
    memory = {
        BASELINE: peak_memory(lambda: dkimpy_body_hash(body)) / 1e6,
        STREAMED: peak_memory(lambda: streamed_body_hash(body)) / 1e6,
    }
    table(f"peak extra memory hashing a {len(body):,} byte body", "MB", memory, BASELINE)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.dkim")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as directory:
        pem = generate_key(Path(directory) / "bench.key")
    key = SigningKey.from_pem("acme.example", "bench", pem, "the benchmark key")
    signer = DkimSigner([key])

    for size in (10_000, 1_000_000, 20_000_000):
        body_hash_round(body_of(size), args.rounds, max(args.seconds, 2.0 if size > 1e6 else 0))

    message_body = body_of(20_000)
    wire = (
        "\r\n".join(f"{name}: {value}" for name, value in HEADERS).encode()
        + b"\r\n\r\n"
        + message_body
    )

    def sendwarden_sign() -> None:
        txn = transaction()
        signer.at_body(txn, message_body)
        signer.at_eom(txn)

    def dkimpy_sign() -> None:
        dkim.sign(
            wire,
            b"bench",
            b"acme.example",
            pem,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[b"from", b"to", b"subject", b"date", b"message-id", b"from"],
        )

    results = interleaved(
        {
            "dkim.sign, whole message (baseline)": lambda: rate(dkimpy_sign, args.seconds),
            "sendwarden DkimSigner (body + eom)": lambda: rate(sendwarden_sign, args.seconds),
        },
        args.rounds,
    )
    table(
        "RSA-2048 signing, 20 KB message",
        "messages/s",
        results,
        "dkim.sign, whole message (baseline)",
    )

    check = IdentityCheck(SETTINGS)
    serial = itertools.count()

    def fresh_from() -> list[tuple[str, str]]:
        return [("From", f"Alice {next(serial)} <alice@acme.example>"), *HEADERS[1:]]

    spoof = [("From", '"=?utf-8?q?billing=40bank.example?=" <x@acme.example>'), *HEADERS[1:]]
    results = interleaved(
        {
            FLOOR: lambda: rate(
                lambda: parse_mailboxes.__wrapped__("From", HEADERS[0][1]), args.seconds
            ),
            "identity check, own From (repeated: cached)": lambda: rate(
                lambda: check.at_eom(transaction()), args.seconds
            ),
            "identity check, own From never seen before": lambda: rate(
                lambda: check.at_eom(transaction(fresh_from())), args.seconds
            ),
            "identity check, encoded spoof (repeated)": lambda: rate(
                lambda: check.at_eom(transaction(spoof)), args.seconds
            ),
        },
        args.rounds,
    )
    table("identity rule per message", "messages/s", results, FLOOR)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(__import__("sys").argv[1:]))
