"""Reloads: a connection keeps its configuration, and a replaced one is closed once no
connection uses it."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from sendwarden.config import settings_from_mapping
from sendwarden.milter.generations import Generations
from sendwarden.pipeline import Pipeline

SETTINGS = settings_from_mapping({})


@dataclass
class FakeRuntime:
    pipeline: Pipeline = field(default_factory=lambda: Pipeline(SETTINGS, []))
    closed: int = 0

    def close(self) -> None:
        self.closed += 1


def test_a_connection_keeps_its_pipeline_across_a_reload() -> None:
    old, new = FakeRuntime(), FakeRuntime()
    generations = Generations(old)
    pipeline, release = generations.lease()
    generations.replace(new)
    assert pipeline is old.pipeline
    assert generations.lease()[0] is new.pipeline
    assert old.closed == 0 and generations.retired_in_use == 1
    release()
    assert old.closed == 1 and generations.retired_in_use == 0


def test_an_unused_configuration_is_closed_at_once_on_reload() -> None:
    old = FakeRuntime()
    generations = Generations(old)
    _, release = generations.lease()
    release()
    generations.replace(FakeRuntime())
    assert old.closed == 1


def test_the_current_configuration_is_not_closed_when_its_connections_end() -> None:
    current = FakeRuntime()
    generations = Generations(current)
    for _ in range(3):
        generations.lease()[1]()
    assert current.closed == 0


def test_release_counts_once_per_connection() -> None:
    old = FakeRuntime()
    generations = Generations(old)
    _, first = generations.lease()
    _, second = generations.lease()
    generations.replace(FakeRuntime())
    first()
    first()  # a second call must not stand in for the other connection
    assert old.closed == 0
    second()
    assert old.closed == 1


def test_many_reloads_leave_only_configurations_still_in_use() -> None:
    runtimes = [FakeRuntime() for _ in range(5)]
    generations = Generations(runtimes[0])
    _, keep = generations.lease()  # one long connection on the first configuration
    for runtime in runtimes[1:]:
        generations.replace(runtime)
    assert [r.closed for r in runtimes] == [0, 1, 1, 1, 0]
    keep()
    assert runtimes[0].closed == 1
    generations.close()
    assert [r.closed for r in runtimes] == [1, 1, 1, 1, 1]


def test_a_failing_close_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(FakeRuntime):
        def close(self) -> None:
            raise OSError("redis pool already gone")

    generations = Generations(Broken())
    generations.replace(FakeRuntime())
    assert "closing a configuration failed" in caplog.text
