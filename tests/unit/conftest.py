"""Unit-test fixtures shared by several modules."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest


@pytest.fixture
def decisions(caplog: pytest.LogCaptureFixture) -> Iterator[list[dict[str, object]]]:
    caplog.set_level(logging.INFO, logger="sendwarden.decisions")
    records: list[dict[str, object]] = []

    class Collector(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(json.loads(record.getMessage()))

    handler = Collector()
    logging.getLogger("sendwarden.decisions").addHandler(handler)
    yield records
    logging.getLogger("sendwarden.decisions").removeHandler(handler)
