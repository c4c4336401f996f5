"""Attachment scanner benchmark: ``python -m loadtest.attachment_scanner``.

For messages of 1, 20 and 100 MB (base64 attachments plus a quoted-printable
part, CRLF line ends as a milter gets them), side by side in one run:

* scanner: sendwarden's streaming scanner fed the message in the 64 KiB chunks
  Postfix hands a milter, reporting every part's decoded size;
* peer: the stdlib `email` parser (BytesFeedParser, policy=default) fed the same
  chunks, then ``get_payload(decode=True)`` for every leaf part.

Throughput is measured without tracing (best of a few rounds; MB = 10^6 bytes),
peak memory in a separate traced round (tracemalloc: what the code allocates).
Both must agree on every part's decoded size, or the run fails: the scanner may
count at most 2 bytes more (for the quoted-printable part it counts the largest
reading, which keeps the CRLF before the next delimiter, as lenient decoders do).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from email import policy
from email.feedparser import BytesFeedParser

from sendwarden.attachments import AttachmentScanner

CHUNK = 65535  # Postfix's milter body chunk
MB = 1_000_000
DEFAULT_SIZES_MB = (1, 20, 100)
BOUNDARY = b"=_sendwarden_bench_boundary"
QP_SHARE = 0.05  # of the message: one quoted-printable text part
QP_TEXT = (
    "Grüße aus Köln \u2013 the quarterly report, façade budget: 12 500 €.\t\n"
    "A long line that needs soft line breaks because it goes on past seventy-six "
    "characters, quite a bit past them = really.\n"
).encode()

Sizes = list[tuple[str, int]]


def build_message(size: int, seed: int = 1) -> bytes:
    """A multipart/mixed message of about `size` bytes: a short text part, a
    quoted-printable part (QP_SHARE of it) and base64 attachments for the rest."""
    rng = random.Random(seed)
    attachments = 1 if size < 10 * MB else 2 if size < 50 * MB else 4
    qp_block = binascii.b2a_qp(QP_TEXT * 16).replace(b"\n", b"\r\n")
    qp_body = qp_block * max(1, int(size * QP_SHARE) // len(qp_block))
    encoded_each = (size - len(qp_body)) // attachments
    raw_each = encoded_each * 57 // 78  # 76 characters + CRLF per 57 bytes
    parts = [
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nSee the attached files.\r\n",
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + qp_body,
    ]
    for index in range(attachments):
        data = rng.randbytes(raw_each)
        parts.append(
            b"Content-Type: application/octet-stream\r\n"
            b'Content-Disposition: attachment; filename="file%d.bin"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            % index
            + base64.encodebytes(data).replace(b"\n", b"\r\n")
        )
    head = (
        b"From: alice@acme.example\r\nTo: bob@example.net\r\nSubject: files\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="' + BOUNDARY + b'"\r\n'
    )
    delimiter = b"\r\n--" + BOUNDARY + b"\r\n"
    return (
        head
        + b"\r\nThis is a multi-part message in MIME format."
        + delimiter
        + delimiter.join(parts)
        + b"\r\n--"
        + BOUNDARY
        + b"--\r\n"
    )


def chunks_of(raw: bytes) -> list[bytes]:
    return [raw[start : start + CHUNK] for start in range(0, len(raw), CHUNK)]


def scanner_sizes(chunks: list[bytes]) -> Sizes:
    scanner = AttachmentScanner(keep_parts=100, headers_in_body=True)
    for chunk in chunks:
        scanner.feed(chunk)
    report = scanner.finish()
    return [(part.content_type, part.decoded_bytes) for part in report.parts if part.role == "part"]


def peer_sizes(chunks: list[bytes]) -> Sizes:
    parser = BytesFeedParser(policy=policy.default)
    for chunk in chunks:
        parser.feed(chunk)
    message = parser.close()
    sizes: Sizes = []
    for part in message.walk():
        if not part.is_multipart():
            payload = part.get_payload(decode=True)
            sizes.append(
                (part.get_content_type(), len(payload) if isinstance(payload, bytes) else 0)
            )
    return sizes


def agree(scanned: Sizes, peered: Sizes) -> bool:
    """Same parts, and the scanner never counts less than the peer decoded (nor more
    than the 2 bytes of a delimiter's line break that a lenient decoder keeps)."""
    return len(scanned) == len(peered) and all(
        kind == peer_kind and 0 <= size - peer_size <= 2
        for (kind, size), (peer_kind, peer_size) in zip(scanned, peered, strict=True)
    )


def best_rates(chunks: list[bytes], size: int) -> tuple[float, float]:
    """MB/s of scanner and peer: best of interleaved rounds (the two share
    whatever else the machine is doing), more rounds for small messages."""
    rounds = 7 if size <= 2 * MB else 3 if size <= 30 * MB else 2
    best = {scanner_sizes: float("inf"), peer_sizes: float("inf")}
    for _ in range(rounds):
        for run in best:
            started = time.perf_counter()
            run(chunks)
            best[run] = min(best[run], time.perf_counter() - started)
    return size / MB / best[scanner_sizes], size / MB / best[peer_sizes]


def traced_peak(run: Callable[[list[bytes]], Sizes], chunks: list[bytes]) -> tuple[int, Sizes]:
    tracemalloc.start()
    try:
        sizes = run(chunks)
        return tracemalloc.get_traced_memory()[1], sizes
    finally:
        tracemalloc.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.attachment_scanner")
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=list(DEFAULT_SIZES_MB),
        metavar="MB",
        help="message sizes in MB (default: 1 20 100)",
    )
    args = parser.parse_args(argv)
    header = (
        f"{'size':>8} {'scanner MB/s':>13} {'peer MB/s':>10} {'ratio':>7} "
        f"{'scanner peak MB':>16} {'peer peak MB':>13}"
    )
    print(f"chunks of {CHUNK} bytes; peer = stdlib BytesFeedParser + get_payload(decode=True)")
    print(header)
    print("-" * len(header))
    for size_mb in args.sizes:
        raw = build_message(size_mb * MB)
        chunks = chunks_of(raw)
        scanner_peak, scanned = traced_peak(scanner_sizes, chunks)
        peer_peak, peered = traced_peak(peer_sizes, chunks)
        if not agree(scanned, peered):
            print(f"MISMATCH at {size_mb} MB:\n  scanner {scanned}\n  peer    {peered}")
            return 1
        scanner_rate, peer_rate = best_rates(chunks, len(raw))
        print(
            f"{len(raw) / MB:>5.0f} MB {scanner_rate:>13.0f} {peer_rate:>10.1f} "
            f"{scanner_rate / peer_rate:>6.1f}x {scanner_peak / MB:>16.2f} {peer_peak / MB:>13.0f}",
            flush=True,
        )
        del raw, chunks
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
