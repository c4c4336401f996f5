"""The Redis connection every MTA host shares, with bounded timeouts.

``redis://host:port/db`` (or ``rediss://``, ``unix://``) is one Redis server;
``redis+cluster://[user:password@]host:port,host:port,...`` (or ``rediss+cluster://``
for TLS) is a Redis Cluster, reached through the listed seed nodes with a
cluster-aware client that follows MOVED/ASK redirections and fail-overs. Every key
of an account shares one hash tag (:func:`account_key`), so each script runs on one
node.
"""

from __future__ import annotations

import contextlib
import threading
import time
import typing
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import AbstractConnection
from redis.retry import Retry
from redis.typing import EncodableT

from sendwarden import metrics
from sendwarden.config import RedisSettings
from sendwarden.store import StoreError, answered

BACKEND = "redis"  # how replies and logs name this store

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def connect(settings: RedisSettings) -> redis.Redis:
    """A pooled client; a slow or dead Redis costs at most ``timeout_ms`` per call.

    For a ``redis+cluster://`` URL the client is a :class:`RedisCluster`; it offers
    the same commands, EVALSHA and non-transactional pipelines the stores use, so it
    is typed as the plain client they take."""
    timeout = settings.timeout_ms / 1000
    if is_cluster_url(settings.url):
        return typing.cast(redis.Redis, connect_cluster(settings.url, timeout))
    return redis.Redis.from_url(
        settings.url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry_on_timeout=False,
        health_check_interval=30,
        decode_responses=False,
    )


def cluster_nodes(url: str) -> tuple[list[ClusterNode], str | None, str | None, bool]:
    """The seed nodes, user, password and TLS flag of a ``redis+cluster://`` URL.
    ValueError says what is wrong with it."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"{url!r} is not a redis+cluster:// URL")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    nodes = []
    for seed in hosts.split(","):
        host, _, port = seed.strip().rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise ValueError(f"{url!r}: seed nodes are host:port, comma-separated ({seed!r})")
        nodes.append(ClusterNode(host, int(port)))  # type: ignore[no-untyped-call]
    if parts.path not in ("", "/", "/0"):
        raise ValueError(f"{url!r}: Redis Cluster has only database 0")
    return nodes, unquote(user) or None, unquote(password) or None, CLUSTER_SCHEMES[scheme]


def connect_cluster(url: str, timeout: float) -> RedisCluster:
    """A cluster client bounded like the single-node one. A node that does not answer
    costs one ``timeout``; the client then re-reads the slot map from another node
    (one more try), so a fail-over shows as a few tempfailed calls, not a hang."""
    nodes, user, password, tls = cluster_nodes(url)
    return RedisCluster(
        startup_nodes=nodes,
        username=user,
        password=password,
        ssl=tls,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
        decode_responses=False,
        require_full_coverage=False,
    )


def account_key(prefix: str, account_id: str, name: str) -> str:
    """``prefix:{account}:name``: one hash tag per account, so an account's keys share a
    Redis Cluster slot and one Lua script may touch them all."""
    return f"{prefix}:{{{account_id}}}:{name}"


@contextlib.contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Turn any redis-py failure into a StoreError naming what was being done (and count
    and time the call for the metrics)."""
    recorder = metrics.current()  # inline, not a second context manager: the hot path
    started = time.perf_counter() if recorder is not None else 0.0
    try:
        yield
    except redis.RedisError as error:
        if recorder is not None:
            recorder.store_done(BACKEND, time.perf_counter() - started, True)
        raise StoreError(BACKEND, f"{what}: {error}") from error
    answered(BACKEND)
    if recorder is not None:
        recorder.store_done(BACKEND, time.perf_counter() - started, False)


#: The client attribute holding its DirectCalls, and the lock that makes it once.
_DIRECT = "_sendwarden_direct_calls"
_DIRECT_LOCK = threading.Lock()


def close_client(client: redis.Redis) -> None:
    """Close a client: its pool and the connections :class:`DirectCalls` made for it."""
    direct = getattr(client, _DIRECT, None)
    if isinstance(direct, DirectCalls):
        direct.close()
    client.close()


class DirectCalls:
    """Commands on redis-py's own connections through its lower-level API
    (``send_command``/``read_response``), for the per-message scripts.

    ``Redis.execute_command`` costs ~45 µs of CPU a call here against ~15 µs for
    the connection API: the pool polls each connection it hands out for unread data
    (a system call, and a hand-over of the GIL between the milter's threads),
    takes a lock, records connection counts and wraps the call in its retry logic.
    A connection here serves one call at a time and goes back to an idle list; one
    that fails is dropped, and one that was idle and found dead (Redis restarted)
    is replaced once: the scripts sent this way are idempotent. A cluster client is
    not a :class:`redis.Redis`: :meth:`for_client` returns None and the caller uses
    the client as it is. The connections belong with the client (one set per client,
    whoever asks: a reload that keeps the client keeps them) and are closed with it
    by :func:`close_client`.
    """

    def __init__(self, make: typing.Callable[[], AbstractConnection]) -> None:
        self._make = make
        self._idle: list[AbstractConnection] = []  # list.pop/append: atomic

    @classmethod
    def for_client(cls, client: redis.Redis) -> DirectCalls | None:
        if type(client) is not redis.Redis:
            return None
        with _DIRECT_LOCK:
            direct = typing.cast(DirectCalls | None, getattr(client, _DIRECT, None))
            if direct is None:
                pool = client.connection_pool
                kwargs = dict(pool.connection_kwargs)
                direct = cls(
                    lambda: typing.cast(AbstractConnection, pool.connection_class(**kwargs))
                )
                setattr(client, _DIRECT, direct)
        return direct

    def __call__(self, *args: EncodableT) -> Any:
        try:
            connection = self._idle.pop()
        except IndexError:
            return self._call(self._make(), args)
        try:
            return self._call(connection, args)
        except redis.ConnectionError:  # idle through a restart: once more, a new one
            return self._call(self._make(), args)

    def _call(self, connection: AbstractConnection, args: tuple[EncodableT, ...]) -> Any:
        try:
            connection.send_command(*args)  # type: ignore[no-untyped-call]
            reply = connection.read_response()  # type: ignore[no-untyped-call]
        except redis.ResponseError:  # an answer (NOSCRIPT, a script error): still usable
            self._idle.append(connection)
            raise
        except BaseException:
            connection.disconnect()  # type: ignore[no-untyped-call]
            raise
        self._idle.append(connection)
        return reply

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.disconnect()  # type: ignore[no-untyped-call]
