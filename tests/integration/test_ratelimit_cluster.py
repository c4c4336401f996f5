"""The counter's scripts run unchanged on Redis Cluster: a one-node cluster (all
16384 slots) refuses any command whose keys span slots with CROSSSLOT, so a
script touching keys of two slots would fail here."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
import redis
from redis.cluster import RedisCluster

from sendwarden.ratelimit import RecipientCounter, SuspensionPolicy
from sendwarden.store.suspensions import RedisSuspensionStore
from tests.support.ports import free_port


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    directory = tempfile.mkdtemp(prefix="sw-redis-cluster-")
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", directory,
         "--save", "", "--appendonly", "no", "--cluster-enabled", "yes",
         "--cluster-config-file", f"{directory}/nodes.conf"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        node = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                node.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        while b"cluster_state:ok" not in node.execute_command("CLUSTER", "INFO"):
            if time.monotonic() > deadline:
                pytest.fail("one-node Redis cluster did not become ready")
            time.sleep(0.05)
        node.close()
        client = RedisCluster(host="127.0.0.1", port=port)
        yield client
        client.close()
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def test_crossslot_is_enforced_by_this_cluster(cluster: RedisCluster) -> None:
    node = redis.Redis(port=cluster.get_default_node().port)
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
    assert counter.refund("acme", {first.bucket: 2}) == 2
    assert counter.usage("acme").used == 0
    assert counter.reset("acme") is not None
