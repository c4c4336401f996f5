"""The counter's scripts run unchanged on Redis Cluster: a one-node cluster (all
16384 slots) refuses any command whose keys span slots with CROSSSLOT, so a
script touching keys of two slots would fail here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from redis.cluster import RedisCluster

from sendwarden.ratelimit import RecipientCounter, SuspensionPolicy
from sendwarden.store.suspensions import RedisSuspensionStore
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.service import wait_until


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    # The cluster bus port is given explicitly: by default it is port + 10000, which
    # does not exist when the kernel hands out a port above 55535.
    server = RedisServer(
        extra_args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-port", str(free_port())],
    )  # fmt: skip
    with server:
        node = redis.Redis(host=server.host, port=server.port)
        node.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        wait_until(
            lambda: b"cluster_state:ok" in node.execute_command("CLUSTER", "INFO"),
            10,
            "one-node Redis cluster did not become ready",
        )
        node.close()
        client = RedisCluster(host=server.host, port=server.port)
        yield client
        client.close()


def test_crossslot_is_enforced_by_this_cluster(cluster: RedisCluster) -> None:
    node = redis.Redis(host="127.0.0.1", port=cluster.get_default_node().port)
    with pytest.raises(redis.ResponseError, match="same slot"):  # CROSSSLOT
        node.eval("return redis.call('MGET', KEYS[1], KEYS[2])", 2, "a", "b")
    node.close()


def test_reserve_refund_suspend_and_status_on_a_cluster(cluster: RedisCluster) -> None:
    counter = RecipientCounter(cluster, "sw", suspension=SuspensionPolicy(after=1))
    first = counter.reserve("acme", 2, 2, "over the limit")
    assert first.admitted
    refused = counter.reserve("acme", 1, 2, "over the limit")
    assert not refused.admitted and refused.suspended
    assert RedisSuspensionStore(cluster, "sw").get("acme") is not None
    assert counter.refund("acme", {first.reservation: first.bucket}) == 2
    assert counter.usage("acme").used == 0
    assert counter.reset("acme") is not None
