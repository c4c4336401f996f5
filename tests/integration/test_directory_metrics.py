"""The directory's gauges on a running milter's /metrics: its size once loaded, and
again after a refresh took a new line in, with its age."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.milter_process import MilterProcess
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.sendwarden_config import build_config, dumps_toml
from tests.support.service import wait_until


def gauges(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("sendwarden_directory_")
    }


def test_a_running_milter_shows_the_directory_on_metrics(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    userdomains = tmp_path / "userdomains"
    userdomains.write_text("acme.example: acme\nshop.example: acme\nglobex.example: globex\n")
    port = free_port()
    config = build_config(
        socket=f"unix:{tmp_path / 'milter.sock'}",
        redis_url=redis_server.url,
        accounts=[{"id": "ftp", "logins": ["ftpuser"]}],
        extra={
            "metrics": {"listen": f"127.0.0.1:{port}"},
            "directory": {"domain_map": str(userdomains), "refresh": "1s"},
        },
    )
    path = tmp_path / "sendwarden.toml"
    path.write_text(dumps_toml(config))
    milter = MilterProcess(path, log_path=tmp_path / "milter.log")
    milter.start()
    try:
        first = gauges(port)
        assert first["sendwarden_directory_accounts"] == 2  # acme and globex
        assert 0 <= first["sendwarden_directory_age_seconds"] < 60
        with userdomains.open("a") as handle:
            handle.write("new.example: newcomer\n")
        wait_until(
            lambda: gauges(port)["sendwarden_directory_accounts"] == 3,
            60,
            "the refreshed directory's size never reached /metrics",
        )
    finally:
        milter.stop()
