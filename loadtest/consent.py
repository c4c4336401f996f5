"""Consent ledger benchmark: ``python -m loadtest.consent [--events N]``.

One run, one machine, private servers started here (PostgreSQL; SQLite in a temp
file). Per backend:

1. Import: a generated CSV of ``--events`` rows (default 1,000,000: grants, 1 in 3
   double opt-in with confirmation and IP, 1 in 10 a later revocation) goes through
   the real importer (``sendwarden consent import`` minus argument parsing): parse,
   validate, hash-chain, store, one transaction. Baseline: the same file parsed and
   validated only, no database (the ceiling for any validating importer).
2. Verify: the whole chain walked and every hash recomputed.
3. Consent check of a 500-recipient message (450 of the account's subscribers, 50
   strangers, a different draw every round) on the full ledger, interleaved in
   rounds so machine noise hits every contender alike:
   * batched: one ``consenting()`` call (what the milter does);
   * one recipient: one ``consenting()`` call for a single address (the round-trip floor);
   * per recipient: 500 one-address calls (the naive design; fewer rounds).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import resource
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sendwarden.consent.csvimport import import_csv, read_events
from sendwarden.consent.model import ConsentStore
from sendwarden.consent.store import open_consent_store
from tests.support.postgres import PostgresServer, find_bindir

ACCOUNTS = 199  # prime: every account gets grants, revocations and gaps alike
MESSAGE = 500
SUBSCRIBERS_PER_MESSAGE = 450
START = datetime(2024, 1, 1, tzinfo=UTC)
HEADER = "recipient,consented_at,kind,method,source,ip,confirmed_at,evidence\n"


def account_of(recipient_id: int) -> str:
    return f"acct{recipient_id % ACCOUNTS}"


def address(recipient_id: int) -> str:
    return f"u{recipient_id}@d{recipient_id % 997}.example"


def is_subscriber_row(row: int) -> bool:
    return row % 10 != 9  # every tenth row revokes the recipient of the row before it


def iso(seconds: int) -> str:
    """``START + seconds`` as ISO 8601 UTC; plain arithmetic, no datetime per row."""
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    month_day = START.day + days  # START is the 1st of a 31-day month; under 28 days here
    return (
        f"{START.year:04d}-{START.month:02d}-{month_day:02d}T{hours:02d}:{minutes:02d}:{secs:02d}Z"
    )


def write_csvs(directory: Path, events: int) -> list[Path]:
    """``events`` rows split into one file per account, as customers would export them
    (the importer records one account per file): recipient ``u<id>`` belongs to
    account ``acct<id % ACCOUNTS>``."""
    paths = [directory / f"{account_of(n)}.csv" for n in range(ACCOUNTS)]
    chunks: list[list[str]] = [[HEADER] for _ in range(ACCOUNTS)]
    revoke_after = 30 * 86_400 // 4  # a week later (stays inside START's month)
    with contextlib.ExitStack() as stack:
        outputs = [stack.enter_context(path.open("w", encoding="utf-8")) for path in paths]
        for row in range(events):
            if is_subscriber_row(row):
                recipient_id = row
                if row % 3 == 0:
                    line = (
                        f"{address(row)},{iso(row)},granted,double-opt-in,"
                        f"https://shop.example/signup,198.51.{row % 200}.{row % 250},"
                        f"{iso(row + 120)},Message-ID <c{row}@shop>\n"
                    )
                else:
                    line = f"{address(row)},{iso(row)},granted,single-opt-in,newsletter form,,,\n"
            else:
                recipient_id = row - 1
                revoked_at = iso(row + revoke_after)
                line = f"{address(recipient_id)},{revoked_at},revoked,unsubscribe-link,,,,\n"
            chunk = chunks[recipient_id % ACCOUNTS]
            chunk.append(line)
            if len(chunk) >= 1000:
                outputs[recipient_id % ACCOUNTS].write("".join(chunk))
                chunk.clear()
        for output, chunk in zip(outputs, chunks, strict=True):
            output.write("".join(chunk))
    return paths


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def message(rng: random.Random, events: int) -> tuple[str, list[str]]:
    """A 500-recipient message of one account: 450 of its known recipients, 50 strangers."""
    account_number = rng.randrange(ACCOUNTS)
    known = range(account_number, events, ACCOUNTS)
    picked = rng.sample(known, min(SUBSCRIBERS_PER_MESSAGE, len(known)))
    recipients = [address(r) for r in picked]
    recipients += [f"stranger{rng.randrange(10**9)}@elsewhere.example" for _ in range(MESSAGE)]
    return account_of(account_number), recipients[:MESSAGE]


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def import_all(store: ConsentStore, files: list[Path]) -> int:
    total = 0
    for path in files:
        with path.open("rb") as stream:
            total += import_csv(
                store,
                stream,
                account=path.stem,
                recorded_by=f"import:{path.name} by bench",
                now=datetime.now(UTC),
                on_error=lambda error: print(f"unexpected bad row: {error}"),
            ).imported
    return total


def validate_only(files: list[Path]) -> int:
    rows = 0
    for path in files:
        with path.open("rb") as stream:
            for _ in read_events(
                stream,
                account=path.stem,
                recorded_by="bench",
                now=datetime.now(UTC),
                on_error=lambda error: None,
            ):
                rows += 1
    return rows


def bench_backend(
    name: str, url: str, files: list[Path], events: int, rounds: int, naive_rounds: int
) -> dict[str, float]:
    store = open_consent_store(url, timeout_ms=60_000)
    try:
        started = time.perf_counter()
        imported = import_all(store, files)
        import_seconds = time.perf_counter() - started
        assert imported == events, (imported, events)
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        started = time.perf_counter()
        report = store.verify()
        verify_seconds = time.perf_counter() - started
        assert report.ok and report.events_checked == events, report

        rng = random.Random(6)
        batched: list[float] = []
        single: list[float] = []
        naive: list[float] = []
        granted = 0
        for round_number in range(rounds):
            account, recipients = message(rng, events)
            batched.append(timed(lambda: store.consenting(account, recipients)))  # noqa: B023
            single.append(timed(lambda: store.consenting(account, recipients[:1])))  # noqa: B023
            if round_number < naive_rounds:
                naive.append(
                    timed(lambda: [store.consenting(account, [r]) for r in recipients])  # noqa: B023
                )
            granted += len(store.consenting(account, recipients))
        return {
            "import_rate": events / import_seconds,
            "import_seconds": import_seconds,
            "rss_mib": rss_mib,
            "verify_rate": events / verify_seconds,
            "batched_p50": percentile(batched, 0.5) * 1000,
            "batched_p99": percentile(batched, 0.99) * 1000,
            "single_p50": percentile(single, 0.5) * 1000,
            "naive_p50": percentile(naive, 0.5) * 1000,
            "naive_p99": percentile(naive, 0.99) * 1000,
            "consenting_share": granted / (rounds * MESSAGE),
        }
    finally:
        store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.consent", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000, help="ledger size (rows)")
    parser.add_argument("--rounds", type=int, default=300, help="messages checked per backend")
    parser.add_argument(
        "--naive-rounds", type=int, default=20, help="of those, also checked one by one"
    )
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]

    with tempfile.TemporaryDirectory(prefix="sw-bench-consent-") as scratch:
        root = Path(scratch)
        started = time.perf_counter()
        files = write_csvs(root, args.events)
        size_mib = sum(path.stat().st_size for path in files) / 2**20
        print(
            f"generated {args.events:,} rows in {len(files)} account files ({size_mib:.0f} MiB) "
            f"in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        started = time.perf_counter()
        validated = validate_only(files)
        validate_rate = validated / (time.perf_counter() - started)
        print(
            f"baseline: parse + validate only, no database: {validate_rate:,.0f} rows/s", flush=True
        )

        results: dict[str, dict[str, float]] = {}
        for backend in backends:
            if backend == "sqlite":
                url = f"sqlite:///{root / 'consent.db'}"
                results[backend] = bench_backend(
                    backend, url, files, args.events, args.rounds, args.naive_rounds
                )
            elif backend == "postgresql":
                if find_bindir() is None:
                    print("postgresql: skipped (server binaries not installed)")
                    continue
                with PostgresServer(durable=True) as server:
                    results[backend] = bench_backend(
                        backend, server.new_database("bench"), files, args.events,
                        args.rounds, args.naive_rounds,
                    )  # fmt: skip
            else:
                raise SystemExit(f"unknown backend {backend!r}")
            print(f"{backend}: done", flush=True)

    print_report(args, validate_rate, results)


def print_report(
    args: argparse.Namespace, validate_rate: float, results: dict[str, dict[str, float]]
) -> None:
    out = io.StringIO()
    out.write(
        f"\nconsent ledger: {args.events:,} events; message of {MESSAGE} recipients "
        f"({SUBSCRIBERS_PER_MESSAGE} subscribers of the account, the rest strangers); "
        f"{args.rounds} rounds (one-by-one: {args.naive_rounds})\n\n"
    )
    out.write(
        f"{'backend':<11} {'import rows/s':>13} {'vs validate-only':>16} {'import s':>9} "
        f"{'peak RSS MiB':>12} {'verify events/s':>15}\n"
    )
    for backend, r in results.items():
        out.write(
            f"{backend:<11} {r['import_rate']:>13,.0f} {r['import_rate'] / validate_rate:>15.2f}x "
            f"{r['import_seconds']:>9.1f} {r['rss_mib']:>12.0f} {r['verify_rate']:>15,.0f}\n"
        )
    out.write(
        f"{'(baseline)':<11} {validate_rate:>13,.0f} {'1.00x':>16}   parse + validate only\n\n"
    )
    out.write(
        f"{'backend':<11} {'500 batched p50/p99 ms':>22} {'1 recipient p50 ms':>19} "
        f"{'500 one-by-one p50/p99 ms':>26} {'batching speed-up':>18}\n"
    )
    for backend, r in results.items():
        out.write(
            f"{backend:<11} {r['batched_p50']:>11.2f} /{r['batched_p99']:>8.2f} "
            f"{r['single_p50']:>19.2f} {r['naive_p50']:>13.1f} /{r['naive_p99']:>10.1f} "
            f"{r['naive_p50'] / r['batched_p50']:>17.1f}x\n"
        )
    shares = ", ".join(f"{b} {r['consenting_share']:.0%}" for b, r in results.items())
    out.write(f"\nrecipients with consent per message (sanity check: expect ~72%): {shares}\n")
    print(out.getvalue(), end="", flush=True)


if __name__ == "__main__":
    main()
