"""The metrics instruments and their HTTP server, on a private registry."""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sendwarden import metrics
from sendwarden.config import ConfigError, settings_from_mapping
from sendwarden.metrics import Metrics, MetricsServer


@pytest.fixture
def installed() -> Iterator[Metrics]:
    recorder = Metrics()
    previous = metrics.install(recorder)
    yield recorder
    metrics.install(previous)


def sample(recorder: Metrics, name: str, **labels: str) -> float | None:
    return recorder.registry.get_sample_value(name, labels)


def test_store_calls_are_counted_and_failures_marked(installed: Metrics) -> None:
    with metrics.store_call("redis", KeyError):
        pass
    with pytest.raises(KeyError), metrics.store_call("redis", KeyError):
        raise KeyError("down")
    with pytest.raises(ValueError), metrics.store_call("redis", KeyError):
        raise ValueError("a bug, not a store error")  # propagates, uncounted
    assert sample(installed, "sendwarden_store_calls_total", backend="redis") == 2
    assert sample(installed, "sendwarden_store_errors_total", backend="redis") == 1
    assert sample(installed, "sendwarden_store_seconds_count", backend="redis") == 2


def test_nothing_is_recorded_when_metrics_are_off() -> None:
    previous = metrics.install(None)
    try:
        with metrics.store_call("redis", KeyError):
            pass
        metrics.directory_loaded(10)  # the directory's hook is safe to call regardless
    finally:
        metrics.install(previous)


def test_directory_hook_sets_size_and_age(installed: Metrics) -> None:
    assert math.isnan(sample(installed, "sendwarden_directory_age_seconds") or 0.0)
    metrics.directory_loaded(42, loaded_at=1000.0)
    assert sample(installed, "sendwarden_directory_accounts") == 42
    assert (sample(installed, "sendwarden_directory_age_seconds") or 0) > 1_000_000


def test_server_answers_metrics_and_health() -> None:
    recorder = Metrics()
    recorder.decided("eom", "", "continue")
    server = MetricsServer(
        "127.0.0.1:0", recorder, {"redis": lambda: None, "consent": lambda: "consent: down"}
    ).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
            text = response.read().decode()
        assert 'sendwarden_decisions_total{rule="none",stage="eom",verdict="continue"} 1.0' in text
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(base + "/healthz", timeout=5)
        assert caught.value.code == 503
        assert json.loads(caught.value.read()) == {
            "status": "failing", "checks": {"redis": "ok", "consent": "consent: down"}
        }  # fmt: skip
    finally:
        server.close()


def test_listen_may_be_empty_but_not_malformed() -> None:
    assert settings_from_mapping({"metrics": {"listen": ""}}).metrics.listen == ""
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({"metrics": {"listen": "9464"}})
    assert caught.value.key == "metrics.listen"


DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def exported_names() -> set[str]:
    """Every sample name a Metrics registry can export (suffixes included)."""
    recorder = Metrics()
    names = set()
    for family in recorder.registry.collect():
        names.add(family.name)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
        names.update(family.name + suffix for suffix in suffixes.get(family.type, []))
    return names


@pytest.mark.parametrize(
    "path",
    ["prometheus/sendwarden.rules.yml", "grafana/sendwarden-dashboard.json"],
)
def test_deploy_files_use_only_metrics_that_exist(path: str) -> None:
    text = (DEPLOY / path).read_text()
    if path.endswith(".json"):
        json.loads(text)
    used = set(re.findall(r"\bsendwarden_[a-z_]+", text))
    assert used, path
    assert used <= exported_names(), used - exported_names()
