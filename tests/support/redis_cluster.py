"""A private Redis Cluster on 127.0.0.1: three masters, one replica each.

Built by hand rather than ``redis-cli --cluster create`` (which polls slowly): each
node gets its slots or its master directly, so the cluster is ready in about a
second. A short ``cluster-node-timeout`` lets a test kill a master and watch the
fail-over within a few seconds.
"""

from __future__ import annotations

import contextlib
import signal
from types import TracebackType
from typing import Self

import redis

from tests.support.ports import PORT_ATTEMPTS, free_port
from tests.support.redis_server import RedisServer, RedisServerError
from tests.support.service import wait_until

SLOTS = 16384


class RedisCluster:
    """``masters`` + ``masters`` replicas; ``url`` is sendwarden's ``redis+cluster://``."""

    def __init__(self, masters: int = 3, *, node_timeout_ms: int = 1000) -> None:
        self.node_timeout_ms = node_timeout_ms
        self._new_nodes(masters)

    def _new_nodes(self, masters: int) -> None:
        self.nodes = [self._node() for _ in range(masters * 2)]
        self.masters = self.nodes[:masters]
        self.replicas = self.nodes[masters:]

    def _node(self) -> RedisServer:
        # The bus port is explicit: port + 10000 may not exist above port 55535.
        return RedisServer(
            extra_args=[
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(free_port()),
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--cluster-replica-validity-factor", "0",  # any replica may take over
                "--repl-diskless-sync", "yes",
                "--repl-diskless-sync-delay", "0",
            ]
        )  # fmt: skip

    @property
    def url(self) -> str:
        seeds = ",".join(f"{node.host}:{node.port}" for node in self.nodes)
        return f"redis+cluster://{seeds}"

    @staticmethod
    def client(node: RedisServer) -> redis.Redis:
        return redis.Redis(host=node.host, port=node.port, socket_timeout=2)

    def start(self) -> Self:
        """Start and join the nodes; started again on new ports when they do not meet
        or a node cannot bind its port (ports are chosen before the nodes bind them,
        and another process may take one in between)."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                return self._start_once()
            except (TimeoutError, RedisServerError):
                if attempt == PORT_ATTEMPTS:
                    raise
                self.close()
                self._new_nodes(len(self.masters))
        raise AssertionError("unreachable")

    def _start_once(self) -> Self:
        for node in self.nodes:
            node.start()
        clients = [self.client(node) for node in self.nodes]
        try:
            ids = [c.execute_command("CLUSTER", "MYID").decode() for c in clients]
            share = SLOTS // len(self.masters)
            for index, master in enumerate(clients[: len(self.masters)]):
                first = index * share
                last = SLOTS - 1 if index == len(self.masters) - 1 else first + share - 1
                master.execute_command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
                master.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            for server in self.nodes[1:]:
                bus = server.extra_args[server.extra_args.index("--cluster-port") + 1]
                clients[0].execute_command("CLUSTER", "MEET", server.host, server.port, bus)
            wait_until(lambda: all(self._knows_all(c) for c in clients), 20, "nodes did not meet")
            for replica, master_id in zip(clients[len(self.masters) :], ids, strict=False):
                replica.execute_command("CLUSTER", "REPLICATE", master_id)
            wait_until(self.ready, 20, "the cluster did not become ready")
        finally:
            for c in clients:
                c.close()
        return self

    def _knows_all(self, client: redis.Redis) -> bool:
        lines = client.execute_command("CLUSTER", "NODES").decode().splitlines()
        return len(lines) == len(self.nodes) and all("handshake" not in line for line in lines)

    def ready(self) -> bool:
        """Every running node says the cluster is ok and every replica is in sync."""
        for node in self.nodes:
            if not node.running:
                continue
            with contextlib.closing(self.client(node)) as c:
                try:
                    if b"cluster_state:ok" not in c.execute_command("CLUSTER", "INFO"):
                        return False
                    info = c.info("replication")
                except redis.RedisError:
                    return False
                if info.get("role") == "slave" and info.get("master_link_status") != "up":
                    return False
        return True

    def master_of(self, key: str) -> RedisServer:
        """The node that serves ``key`` now (as the first running node sees it)."""
        node = next(node for node in self.nodes if node.running)
        with contextlib.closing(self.client(node)) as c:
            slot = c.execute_command("CLUSTER", "KEYSLOT", key)
            for first, last, primary, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if first <= slot <= last:
                    return next(n for n in self.nodes if n.port == int(primary[1]))
        raise LookupError(key)

    def kill(self, node: RedisServer) -> None:
        """SIGKILL: the node vanishes without a goodbye, as a crashed host would."""
        node._terminate(signal.SIGKILL, 5)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
