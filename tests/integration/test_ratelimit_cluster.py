"""sendwarden on a real Redis Cluster (issue 13, item 3): three masters with one
replica each, reached through ``redis+cluster://`` with redis-py's cluster client.

Counters, suspensions, risk counts, recent recipients and alert state work for
accounts on every master (no MOVED error reaches sendwarden), and killing a master
under load gives ``451 4.3.0`` while the cluster fails over, then recovery, with
nothing admitted over any account's limit.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from sendwarden.alerts.risk import RiskStore
from sendwarden.alerts.rules import Reported
from sendwarden.alerts.state import ReportedStore
from sendwarden.checks.ratelimit import RecipientRateCheck
from sendwarden.checks.relay import RelayCheck
from sendwarden.checks.suspension import SuspensionCheck
from sendwarden.config import RedisSettings, settings_from_mapping
from sendwarden.consent.bulk import RecentRecipients
from sendwarden.pipeline import Pipeline
from sendwarden.policy.facts import Client
from sendwarden.policy.suspension import Suspension
from sendwarden.ratelimit import RecipientCounter, SuspensionPolicy, counter_from_settings
from sendwarden.store.redis import connect
from sendwarden.store.suspensions import RedisSuspensionStore
from tests.support.redis_cluster import RedisCluster
from tests.support.service import wait_until

REMOTE = Client(address=ipaddress.ip_address("198.51.100.7"), hostname="client.example", port=4711)
ACCOUNTS = [f"acct{n}" for n in range(12)]
LIMIT = 25


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster() as started:
        yield started


@pytest.fixture
def client(cluster: RedisCluster) -> Iterator[redis.Redis]:
    wait_until(cluster.ready, 30, "the cluster is not ready")
    client = connect(RedisSettings(url=cluster.url, timeout_ms=500))
    yield client
    client.close()


def masters_used(cluster: RedisCluster, accounts: list[str]) -> set[int]:
    return {cluster.master_of(f"sw:{{{account}}}:rate").port for account in accounts}


def test_crossslot_is_enforced_by_this_cluster(cluster: RedisCluster) -> None:
    node = cluster.client(cluster.masters[0])
    with pytest.raises(redis.ResponseError, match="slot"):  # CROSSSLOT or MOVED
        node.eval("return redis.call('MGET', KEYS[1], KEYS[2])", 2, "a", "b")
    node.close()


def test_every_store_works_for_accounts_on_every_master(
    cluster: RedisCluster, client: redis.Redis
) -> None:
    accounts = [f"spread{n}" for n in range(12)]
    assert len(masters_used(cluster, accounts)) == 3  # the accounts cover every master
    counter = RecipientCounter(client, "sw", suspension=SuspensionPolicy(after=1))
    suspensions = RedisSuspensionStore(client, "sw")
    risk = RiskStore(client, "sw")
    recent = RecentRecipients(client, "sw")
    for account in accounts:
        first = counter.reserve(account, 2, 2, "over the limit")
        assert first.admitted
        refused = counter.reserve(account, 1, 2, "over the limit")
        assert not refused.admitted and refused.suspended
        assert suspensions.get(account) is not None
        assert counter.refund(account, {first.reservation: first.bucket}) == 2
        assert counter.refund(account, {first.reservation: first.bucket}) == 0  # once
        assert counter.usage(account).used == 0
        assert counter.reset(account)
        assert suspensions.lift(account)
        suspensions.suspend(account, Suspension(reason="staff", since="2026-01-01T00:00:00Z"))
        assert suspensions.get(account) == Suspension(reason="staff", since="2026-01-01T00:00:00Z")
        risk.record(account, "recipient-rate", 3)
        recent.add(account, ["a@example.net", "b@example.net", "a@example.net"])
        assert recent.count(account) == 2
    counts = risk.refusals(accounts)  # one pipeline across all three masters
    assert counts == {account: {"recipient-rate": 3} for account in accounts}
    reported = ReportedStore(client, "sw")
    state = {"k": Reported(kind="risk", subject="s", since=1.0, last_sent=2.0)}
    reported.save({}, state)
    assert reported.load() == state
    with reported.sweep_lock() as first_lock, reported.sweep_lock() as second_lock:
        assert first_lock and not second_lock


def config(url: str) -> dict[str, Any]:
    return {
        "redis": {"url": url, "timeout_ms": 300},
        "policy": {"local_domains": ["hosting.example"], "recipients_per_hour": LIMIT},
        "accounts": [
            {"id": account, "logins": [f"{account}@hosting.example"]}
            for account in [*ACCOUNTS, *(f"late{n}" for n in range(64))]
        ],
    }


def send_one(pipeline: Pipeline, account: str) -> str:
    """One single-recipient SMTP transaction; the RCPT reply ("" when accepted) or EOM's."""
    txn = pipeline.begin(REMOTE, login=f"{account}@hosting.example", mail_from="s@x.example")
    mail = pipeline.mail(txn)
    if mail.is_final:
        return mail.reply()
    rcpt = pipeline.rcpt(txn, "someone@example.net").reply()
    if rcpt:
        pipeline.abort(txn)
        return rcpt
    return pipeline.eom(txn).reply()


def test_killing_a_master_mid_load_tempfails_then_recovers_without_over_admission(
    cluster: RedisCluster,
) -> None:
    settings = settings_from_mapping(config(cluster.url))
    wait_until(cluster.ready, 30, "the cluster is not ready")
    client = connect(settings.redis)
    checks = [
        SuspensionCheck(RedisSuspensionStore(client, "sw")),
        RelayCheck(settings.policy.local_domains),
        RecipientRateCheck(counter_from_settings(settings, client), settings),
    ]
    pipeline = Pipeline(settings, checks)
    victim = cluster.master_of(f"sw:{{{ACCOUNTS[0]}}}:rate")
    on_victim = [a for a in ACCOUNTS if cluster.master_of(f"sw:{{{a}}}:rate") is victim]
    # an account with no traffic yet whose keys live on the master that will die
    late = next(
        f"late{n}" for n in range(64) if cluster.master_of(f"sw:{{late{n}}}:rate") is victim
    )
    outcomes: list[tuple[float, str, str]] = []  # (time, account, reply)
    lock = threading.Lock()
    stop = threading.Event()
    killed_at: list[float] = []

    def load(index: int) -> None:
        n = index
        while not stop.is_set():
            account = ACCOUNTS[n % len(ACCOUNTS)]
            n += 1
            reply = send_one(pipeline, account)
            with lock:
                outcomes.append((time.monotonic(), account, reply))
            time.sleep(0.01)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        cluster.kill(victim)
        killed_at.append(time.monotonic())

        # the killed master's slots answer again once its replica has taken over
        wait_until(
            lambda: send_one(pipeline, late) == "",
            60,
            "the slots of the killed master never recovered",
            interval=0.1,
        )
        recovered_after = time.monotonic() - killed_at[0]
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    checks[2].pay_owed()  # type: ignore[attr-defined]

    accepted = Counter(account for _, account, reply in outcomes if reply == "")
    tempfailed = [reply for _, _, reply in outcomes if reply.startswith("451 4.3.0")]
    limited = [reply for _, _, reply in outcomes if reply.startswith("451 4.7.1")]
    other = [reply for _, _, reply in outcomes if reply and not reply.startswith("451 4.")]
    counter = counter_from_settings(settings, client)
    over = {a: accepted[a] - LIMIT for a in ACCOUNTS if accepted[a] > LIMIT}
    counted = {a: counter.usage(a).used for a in ACCOUNTS}
    print(
        f"cluster fail-over: accepted={sum(accepted.values())} tempfailed={len(tempfailed)} "
        f"over-limit refusals={len(limited)} over-admitted={sum(over.values())} "
        f"recovered after {recovered_after:.1f}s; accounts on the killed master={on_victim}"
    )
    assert tempfailed, "no 451 4.3.0 while the cluster failed over"
    assert not other, other
    assert over == {}, over
    assert all(counted[a] >= accepted[a] for a in ACCOUNTS), (counted, accepted)
    client.close()
