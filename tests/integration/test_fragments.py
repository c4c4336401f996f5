"""message/partial fragments counted across messages in a real Redis (and on a
Redis Cluster: one key per account and id, under the account's hash tag)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from sendwarden.attachments.fragments import RedisFragments
from sendwarden.attachments.report import Fragment
from sendwarden.checks.attachments import AttachmentCheck
from sendwarden.config import RedisSettings
from sendwarden.policy.facts import Client, Transaction
from sendwarden.store import StoreError
from sendwarden.store.redis import connect
from tests.integration.test_ratelimit_cluster import cluster  # noqa: F401  (fixture)
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer
from tests.support.service import wait_until


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    connection = connect(RedisSettings(url=redis_server.url, timeout_ms=1000))
    yield connection
    connection.close()


def test_fragments_add_up_per_id_and_a_resent_fragment_replaces_itself(
    client: redis.Redis,
) -> None:
    store = RedisFragments(client, "sw")
    assert store.add("acme", Fragment("f1@acme", 1, 0, 1000)).bytes == 1000
    assert store.add("acme", Fragment("f1@acme", 2, 0, 500)).bytes == 1500
    again = store.add("acme", Fragment("f1@acme", 2, 3, 700))  # sent again, bigger
    assert (again.bytes, again.fragments, again.declared_total) == (1700, 2, 3)
    assert store.add("acme", Fragment("other", 1, 0, 10)).bytes == 10  # another id
    assert store.add("beta", Fragment("f1@acme", 1, 0, 10)).bytes == 10  # another account
    key = store.key("acme", "f1@acme")
    assert key.startswith("sw:{acme}:partial:")
    assert 0 < client.ttl(key) <= 7 * 24 * 3600


def txn_for(account: str | None) -> Transaction:
    return Transaction(client=Client(address=None))


def fragment_message(number: int, total: int, size: int) -> tuple[str, bytes]:
    header = f'message/partial; id="big@acme.example"; number={number}; total={total}'
    return header, b"A" * (size - 2) + b"\r\n"


def send(check: AttachmentCheck, number: int, total: int, size: int) -> str | None:
    txn = Transaction(client=Client(address=None))
    content_type, body = fragment_message(number, total, size)
    check.at_header(txn, "Content-Type", content_type)
    check.at_body(txn, body)
    verdict = check.at_eom(txn)
    return verdict.reply() if verdict else None


def test_count_mode_caps_the_whole_file_across_messages(client: redis.Redis) -> None:
    check = AttachmentCheck(3000, 20, "count", RedisFragments(client, "sw"))
    assert send(check, 1, 3, 1200) is None
    assert send(check, 2, 3, 1200) is None
    refused = send(check, 3, 3, 1200)
    assert refused is not None
    assert refused.startswith("552 5.3.4 Message from this sender (no known account) refused:")
    assert "add up to" in refused and "3600 bytes" in refused
    assert "Send the file whole or share a link." in refused


def test_refuse_mode_needs_no_store() -> None:
    check = AttachmentCheck(3000, 20)
    refused = send(check, 1, 2, 100)
    assert refused is not None and refused.startswith("554 5.6.0")
    with pytest.raises(ValueError, match="fragment store"):
        AttachmentCheck(3000, 20, "count")


def test_redis_down_is_a_store_error(redis_server: RedisServer, client: redis.Redis) -> None:
    store = RedisFragments(client, "sw")
    redis_server.stop()
    with pytest.raises(StoreError, match="redis"):
        store.add("acme", Fragment("x", 1, 1, 10))


def test_fragments_on_a_cluster(cluster: RedisCluster) -> None:  # noqa: F811
    """Three masters: every account's fragments live in its own slot, whichever master."""
    wait_until(cluster.ready, 30, "the cluster is not ready")
    client = connect(RedisSettings(url=cluster.url, timeout_ms=1000))
    try:
        store = RedisFragments(client, "sw")
        masters = set()
        for account in ("acme", "beta", "gamma", "delta", "omega"):
            store.add(account, Fragment("c@acme", 1, 2, 100))
            tally = store.add(account, Fragment("c@acme", 2, 2, 50))
            assert (tally.bytes, tally.fragments, tally.declared_total) == (150, 2, 2)
            masters.add(cluster.master_of(store.key(account, "c@acme")).port)
        assert len(masters) > 1  # the keys really are spread over the cluster
    finally:
        client.close()
