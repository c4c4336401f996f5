"""Prometheus metrics and ``/healthz`` for every sendwarden process (milter, API, alert
sweep, SMTP proxy), with the official ``prometheus_client``.

One :class:`Metrics` per process, installed with :func:`install` when the process's
``metrics.*listen`` is set; the instruments the hot path touches (the pipeline, the
Redis and SQL wrappers) ask :func:`current` and do nothing when it is ``None``, so
``listen = ""`` costs one attribute read. Label children are cached: a decision
costs a dict lookup and an increment, not a label parse.

Any process serves its metrics with :func:`serve` (``/metrics``, ``/healthz``); the
proxy and the account directory use the same calls (:func:`directory_loaded` is the
directory's hook).
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

#: Decision latency buckets (seconds): a stage takes ~50 µs without I/O, ~1 ms with Redis.
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0)

#: A health check: None when the component answers, else what went wrong.
HealthCheck = Callable[[], str | None]


class _Histogram:
    """Bucket counts (not cumulative; the last is +Inf) and the sum."""

    __slots__ = ("counts", "sum")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)
        self.sum = 0.0

    def samples(self, bounds: tuple[float, ...]) -> list[tuple[str, float]]:
        cumulative, total = [], 0
        for bound, count in zip((*bounds, math.inf), self.counts, strict=True):
            total += count
            cumulative.append(("+Inf" if bound == math.inf else repr(bound), float(total)))
        return cumulative


class HotPath(Collector):
    """Decisions, stage latency and store calls: what every message touches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._decisions: dict[tuple[str, str, str], int] = {}
        self._stages: dict[str, _Histogram] = {}
        self._stores: dict[str, _Histogram] = {}
        self._store_errors: dict[str, int] = {}

    def decided(self, stage: str, rule: str, verdict: str) -> None:
        key = (stage, rule or "none", verdict)
        with self._lock:
            self._decisions[key] = self._decisions.get(key, 0) + 1

    def stage_done(self, stage: str, seconds: float) -> None:
        index = bisect.bisect_left(STAGE_BUCKETS, seconds)
        with self._lock:
            histogram = self._stages.get(stage)
            if histogram is None:
                histogram = self._stages[stage] = _Histogram(len(STAGE_BUCKETS))
            histogram.counts[index] += 1
            histogram.sum += seconds

    def store_done(self, backend: str, seconds: float, failed: bool) -> None:
        index = bisect.bisect_left(STORE_BUCKETS, seconds)
        with self._lock:
            histogram = self._stores.get(backend)
            if histogram is None:
                histogram = self._stores[backend] = _Histogram(len(STORE_BUCKETS))
                self._store_errors[backend] = 0
            histogram.counts[index] += 1
            histogram.sum += seconds
            if failed:
                self._store_errors[backend] += 1

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            decisions = dict(self._decisions)
            stages = {k: (list(v.counts), v.sum) for k, v in self._stages.items()}
            stores = {k: (list(v.counts), v.sum) for k, v in self._stores.items()}
            errors = dict(self._store_errors)
        family = CounterMetricFamily(
            "sendwarden_decisions",
            "Decisions recorded, by stage (mail, rcpt, eom, abort), rule that decided "
            "(none when nothing refused) and verdict (accept, continue, reject, tempfail, "
            "discard, monitor).",
            labels=["stage", "rule", "verdict"],
        )
        for key, count in sorted(decisions.items()):
            family.add_metric(list(key), count)
        yield family
        yield _histogram_family(
            "sendwarden_decision_seconds",
            "Time the pipeline took to decide one stage (mail, rcpt, eom), store calls included.",
            "stage", stages, STAGE_BUCKETS,
        )  # fmt: skip
        calls = CounterMetricFamily(
            "sendwarden_store_calls", "Calls to a storage backend.", labels=["backend"]
        )
        failed = CounterMetricFamily(
            "sendwarden_store_errors",
            "Calls to a storage backend that failed (on_store_error decided).",
            labels=["backend"],
        )
        for backend, (counts, _) in sorted(stores.items()):
            calls.add_metric([backend], sum(counts))
            failed.add_metric([backend], errors.get(backend, 0))
        yield calls
        yield failed
        yield _histogram_family(
            "sendwarden_store_seconds", "Latency of calls to a storage backend.",
            "backend", stores, STORE_BUCKETS,
        )  # fmt: skip


def _histogram_family(
    name: str,
    documentation: str,
    label: str,
    values: Mapping[str, tuple[list[int], float]],
    bounds: tuple[float, ...],
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=[label])
    for key, (counts, total) in sorted(values.items()):
        histogram = _Histogram(len(bounds))
        histogram.counts = counts
        family.add_metric([key], histogram.samples(bounds), total)
    return family


class Metrics:
    """The metrics of one process, on their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry or CollectorRegistry()
        # The hot path's instruments: one collector, plain counts under one lock
        # (prometheus_client's Histogram.observe costs ~10 us on a loaded 2-core host,
        # this ~1 us; measured in loadtest.metrics).
        self.hot = HotPath()
        registry.register(self.hot)
        self.connections = Gauge(
            "sendwarden_connections_in_flight",
            "MTA connections (milter) or SMTP sessions (proxy) open now.",
            registry=registry,
        )
        self.reloads = Counter(
            "sendwarden_reloads",
            "Configuration reloads (SIGHUP), by result (ok, refused).",
            ["result"],
            registry=registry,
        )
        self.generation = Gauge(
            "sendwarden_config_generation",
            "Configurations loaded since start (1 = the one from start-up).",
            registry=registry,
        )
        self.config_loaded = Gauge(
            "sendwarden_config_loaded_timestamp_seconds",
            "When the running configuration was loaded.",
            registry=registry,
        )
        self.alerts = Counter(
            "sendwarden_alerts",
            "Alerts to the abuse desk, by kind of condition and result (sent, failed).",
            ["kind", "result"],
            registry=registry,
        )
        self.dnsbl_listed = Gauge(
            "sendwarden_dnsbl_listed",
            "1 when the last alert sweep found the address listed on the zone, 0 when clear "
            "(absent when the lookup failed).",
            ["address", "zone"],
            registry=registry,
        )
        self.consent_events = Gauge(
            "sendwarden_consent_store_events",
            "Events in the consent ledger (NaN when the store does not answer).",
            registry=registry,
        )
        self.directory_accounts = Gauge(
            "sendwarden_directory_accounts",
            "Accounts in the account directory as last loaded.",
            registry=registry,
        )
        self.directory_age = Gauge(
            "sendwarden_directory_age_seconds",
            "Seconds since the account directory was last loaded successfully "
            "(NaN until it has been).",
            registry=registry,
        )
        self._directory_loaded_at = math.nan
        self.directory_age.set_function(lambda: time.time() - self._directory_loaded_at)
        self.consent_events.set(math.nan)

    # -- hot path ------------------------------------------------------------------

    def decided(self, stage: str, rule: str, verdict: str) -> None:
        self.hot.decided(stage, rule, verdict)

    def stage_done(self, stage: str, seconds: float) -> None:
        self.hot.stage_done(stage, seconds)

    def store_done(self, backend: str, seconds: float, failed: bool) -> None:
        self.hot.store_done(backend, seconds, failed)

    # -- the rest ------------------------------------------------------------------

    def loaded_configuration(self, reload: bool) -> None:
        """A configuration was loaded (at start-up, or by a reload that worked)."""
        if reload:
            self.reloads.labels("ok").inc()
        self.generation.inc()
        self.config_loaded.set(time.time())

    def set_directory(self, accounts: int, loaded_at: float) -> None:
        self.directory_accounts.set(accounts)
        self._directory_loaded_at = loaded_at

    def watch_consent_size(self, size: Callable[[], int | None]) -> None:
        """Read the ledger's size at each scrape (None: the store did not answer)."""

        def read() -> float:
            value = size()
            return math.nan if value is None else float(value)

        self.consent_events.set_function(read)

    def render(self) -> bytes:
        return generate_latest(self.registry)


_current: Metrics | None = None


def install(metrics: Metrics | None) -> Metrics | None:
    """Make ``metrics`` the process's metrics (None: off); returns the previous one."""
    global _current
    previous, _current = _current, metrics
    return previous


def current() -> Metrics | None:
    return _current


@contextlib.contextmanager
def store_call(backend: str, errors: type[BaseException] | tuple[type[BaseException], ...]
               ) -> Iterator[None]:  # fmt: skip
    """Count and time one call to ``backend``; an exception of ``errors`` counts as failed."""
    metrics = _current
    if metrics is None:
        yield
        return
    started = time.perf_counter()
    try:
        yield
    except errors:
        metrics.store_done(backend, time.perf_counter() - started, True)
        raise
    metrics.store_done(backend, time.perf_counter() - started, False)


def directory_loaded(accounts: int, loaded_at: float | None = None) -> None:
    """The account directory's hook: call after every successful load."""
    metrics = _current
    if metrics is not None:
        metrics.set_directory(accounts, time.time() if loaded_at is None else loaded_at)


# -- serving -------------------------------------------------------------------------


def health_report(checks: Mapping[str, HealthCheck]) -> tuple[bool, dict[str, Any]]:
    """Run every check; (all ok, the JSON document ``/healthz`` answers)."""
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            problem = check()
        except Exception as error:  # a check that crashes is a failed check
            problem = f"{type(error).__name__}: {error}"
        results[name] = "ok" if problem is None else problem
    healthy = all(value == "ok" for value in results.values())
    return healthy, {"status": "ok" if healthy else "failing", "checks": results}


class MetricsServer:
    """``/metrics`` and ``/healthz`` over HTTP on a daemon thread."""

    def __init__(
        self, listen: str, metrics: Metrics, checks: Mapping[str, HealthCheck] | None = None
    ) -> None:
        host, _, port = listen.rpartition(":")
        self.metrics = metrics
        self.checks = dict(checks or {})
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._answer(200, CONTENT_TYPE_LATEST, server.metrics.render())
                elif path == "/healthz":
                    healthy, document = health_report(server.checks)
                    body = json.dumps(document).encode()
                    self._answer(200 if healthy else 503, "application/json", body)
                else:
                    self._answer(404, "text/plain", b"/metrics or /healthz\n")

            def _answer(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every 15 s would flood the log

        self._httpd = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="metrics", daemon=True
        )

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def serve(
    listen: str, checks: Callable[[Metrics], Mapping[str, HealthCheck]] | None = None
) -> MetricsServer | None:
    """Install a :class:`Metrics` for this process and serve it on ``listen``; None when
    ``listen`` is empty (metrics off). ``checks`` builds the ``/healthz`` checks (and
    may attach scrape-time gauges to the metrics). A port that cannot be bound is
    logged, and the process goes on without metrics: mail never waits for monitoring."""
    if not listen:
        return None
    metrics = Metrics()
    try:
        server = MetricsServer(listen, metrics, checks(metrics) if checks else None).start()
    except OSError as error:
        log.error("metrics: cannot listen on %s (%s); running without metrics", listen, error)
        return None
    install(metrics)
    log.info("metrics on http://%s/metrics, health on /healthz", listen)
    return server
