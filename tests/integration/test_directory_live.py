"""The live directory: re-reading the sources in a child process, swapping whole
snapshots, and keeping the last good directory (logged once, alerted) when a source
goes bad."""

from __future__ import annotations

import logging
import re
import sqlite3
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sendwarden.alerts.rules import Alert
from sendwarden.config import (
    ConfigError,
    load_directory_settings,
    load_settings,
    settings_from_mapping,
)
from sendwarden.directory import build
from sendwarden.directory.live import DIRECTORY_FAILED, LiveDirectory, account_directory
from sendwarden.directory.sources import SourceError
from tests.support.forked_build import snapshot_tables
from tests.support.sendwarden_config import dumps_toml
from tests.support.service import wait_until


class Recorder:
    """An alert channel that keeps what it was given (the real channels are tested in
    test_alert_channels)."""

    name = "recorder"

    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.alerts.append(alert)


@pytest.fixture
def map_file(tmp_path: Path) -> Path:
    path = tmp_path / "userdomains"
    path.write_text("acme.example: acme\nglobex.example: globex\n")
    return path


def live(map_file: Path, recorder: Recorder, **directory: object) -> LiveDirectory:
    settings = settings_from_mapping(
        {"directory": {"domain_map": str(map_file), "refresh": 3600, **directory}}
    )
    directory_ = LiveDirectory(settings, notifiers=[recorder])
    directory_.load()
    return directory_


def test_an_appended_line_is_in_force_after_a_refresh(map_file: Path) -> None:
    recorder = Recorder()
    directory = live(map_file, recorder)
    try:
        accounts = account_directory(directory)
        assert accounts.owner_of_domain("new.example") is None
        assert directory.refresh() is False  # unchanged file: not re-read
        with map_file.open("a") as handle:
            handle.write("new.example: newcomer\n")
        assert directory.refresh() is True
        owner = accounts.owner_of_domain("new.example")
        assert owner is not None and owner.id == "newcomer"
    finally:
        directory.close()
    assert recorder.alerts == []


def test_a_bad_source_keeps_the_last_good_directory_logs_once_and_alerts(
    map_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    directory = live(map_file, recorder)
    try:
        accounts = account_directory(directory)
        map_file.write_text("acme.example: acme\nglobex.exa")  # cut mid-line
        with caplog.at_level(logging.ERROR):
            assert directory.refresh() is False
            assert directory.refresh() is False
        errors = [r for r in caplog.records if "keeping the last good one" in r.getMessage()]
        assert len(errors) == 1, caplog.text
        assert "last line has no newline" in errors[0].getMessage()
        assert accounts.owner_of_domain("globex.example") is not None
        assert [a.kind for a in recorder.alerts] == ["new"]
        assert recorder.alerts[0].finding.kind == DIRECTORY_FAILED
        assert "last line has no newline" in recorder.alerts[0].finding.lines[0]

        map_file.write_text("acme.example: acme\nbroken line\n")  # another problem: logged
        assert directory.refresh() is False
        map_file.write_text("acme.example: acme\nglobex.example: globex\nx.example: x\n")
        assert directory.refresh() is True
        assert [a.kind for a in recorder.alerts] == ["new", "resolved"]
        assert accounts.owner_of_domain("x.example") is not None
    finally:
        directory.close()


def test_a_truncated_map_is_refused_by_the_shrink_guard(map_file: Path) -> None:
    map_file.write_text("".join(f"d{i}.example: a{i}\n" for i in range(20)))
    recorder = Recorder()
    directory = live(map_file, recorder)
    try:
        accounts = account_directory(directory)
        map_file.write_text("d0.example: a0\n")  # whole lines, but most are gone
        assert directory.refresh() is False
        assert accounts.owner_of_domain("d19.example") is not None
        map_file.write_text("")
        assert directory.refresh() is False
        assert accounts.owner_of_domain("d19.example") is not None
        assert len(recorder.alerts) == 1
    finally:
        directory.close()


def test_a_bad_source_at_start_is_an_error(map_file: Path) -> None:
    map_file.write_text("nonsense\n")
    with pytest.raises(SourceError, match="line 1"):
        live(map_file, Recorder())


def test_lookups_never_wait_for_a_refresh(map_file: Path) -> None:
    """Decisions keep getting answers from a whole directory while refreshes run."""
    map_file.write_text("".join(f"d{i}.example: a{i % 50}\n" for i in range(2000)))
    directory = live(map_file, Recorder())
    accounts = account_directory(directory)
    stop = threading.Event()
    missing: list[str] = []
    failures: list[BaseException] = []

    def decide() -> None:
        while not stop.is_set():
            for i in (0, 999, 1999):
                try:
                    owner = accounts.owner_of_domain(f"d{i}.example")
                except Exception as error:  # a lookup on a directory being replaced
                    failures.append(error)
                    return
                if owner is None:
                    missing.append(f"d{i}")

    thread = threading.Thread(target=decide)
    thread.start()
    try:
        for round_ in range(6):
            with map_file.open("a") as handle:
                handle.write(f"extra{round_}.example: a1\n")
            assert directory.refresh() is True
    finally:
        stop.set()
        thread.join()
        directory.close()
    assert failures == []
    assert missing == []


def test_a_kept_directory_answers_at_once_after_a_restart(
    map_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    first = live(map_file, Recorder(), state_directory=str(state))
    first.close()
    assert (state / "directory.db").exists()
    map_file.write_text("acme.example: acme\nglobex.example: globex\nlater.example: later\n")
    with caplog.at_level(logging.INFO):
        second = live(map_file, Recorder(), state_directory=str(state))
    try:
        assert "starting on the last good one kept in" in caplog.text
        accounts = account_directory(second)
        assert accounts.owner_of_domain("globex.example") is not None
        assert accounts.owner_of_domain("later.example") is None  # not read yet
        second.start()  # re-reads the sources at once, in the background
        wait_until(
            lambda: accounts.owner_of_domain("later.example"), 60, "the sources were not re-read"
        )
    finally:
        second.close()
    assert sorted(p.name for p in state.iterdir()) == ["directory.db"]
    # Other sources: the kept directory is not theirs, so they are read first.
    other = tmp_path / "other"
    other.write_text("other.example: other\n")
    third = live(other, Recorder(), state_directory=str(state))
    try:
        assert account_directory(third).owner_of_domain("globex.example") is None
        assert account_directory(third).owner_of_domain("other.example") is not None
    finally:
        third.close()


def test_a_reload_keeps_contested_domains_with_their_owners(map_file: Path) -> None:
    running = live(map_file, Recorder())
    map_file.write_text("acme.example: acme\nglobex.example: globex\nacme.example: mallory\n")
    settings = running.settings
    reloaded = LiveDirectory(settings, notifiers=[Recorder()])
    try:
        reloaded.load(running)
        owner = account_directory(reloaded).owner_of_domain("acme.example")
        assert owner is not None and owner.id == "acme"
    finally:
        reloaded.close()
        running.close()


def test_closing_stops_a_build_in_progress_without_an_alert(tmp_path: Path) -> None:
    """A shutdown (or the end of a replaced configuration) does not wait for a long
    read of the sources, and a read it stopped is no problem to report."""
    import sqlite3
    import time

    database = tmp_path / "panel.db"
    sqlite3.connect(database).close()
    slow = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000000) "
        "SELECT 'acme' AS account FROM c WHERE x < 0"
    )
    settings = settings_from_mapping(
        {"directory": {"sql_url": f"sqlite:///{database}", "sql_query": "SELECT 'acme' AS account"}}
    )
    recorder = Recorder()
    directory = LiveDirectory(settings, notifiers=[recorder])
    directory.load()
    directory.directory_settings = settings_from_mapping(
        {"directory": {"sql_url": f"sqlite:///{database}", "sql_query": slow}}
    ).directory
    refresher = threading.Thread(target=lambda: directory.refresh(force=True))
    refresher.start()
    wait_until(
        lambda: directory._child is not None and directory._child.poll() is None,
        30,
        "the build did not start",
    )
    started = time.monotonic()
    directory.close()
    refresher.join(timeout=30)
    assert time.monotonic() - started < 15
    assert not refresher.is_alive()
    assert recorder.alerts == []


def _no_second_build(*args: object, **kwargs: object) -> object:
    raise AssertionError("the directory started a build of its own")


def test_the_first_read_started_early_is_taken_over(
    map_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sendwarden milter` starts reading the sources before it imports the rest; the
    directory it then builds takes that read over instead of starting its own."""
    settings = settings_from_mapping({"directory": {"domain_map": str(map_file)}})
    build.start_early(settings.directory)
    early = build._early
    assert early is not None and early.own_workdir
    monkeypatch.setattr("sendwarden.directory.live.BuildChild", _no_second_build)
    directory = LiveDirectory(settings, notifiers=[Recorder()])
    try:
        directory.load()
        assert build._early is None
        assert directory.workdir == early.workdir
        owner = account_directory(directory).owner_of_domain("globex.example")
        assert owner is not None and owner.id == "globex"
    finally:
        directory.close()
    assert not early.workdir.exists()


def test_an_early_read_nobody_takes_is_stopped(map_file: Path) -> None:
    settings = settings_from_mapping({"directory": {"domain_map": str(map_file)}})
    build.start_early(settings.directory)
    early = build._early
    assert early is not None
    build._discard_early()  # what happens at exit
    assert early.child.process.returncode is not None
    assert not early.workdir.exists() and build._early is None
    # Other settings than the early read's: it is not theirs.
    build.start_early(settings.directory)
    other = settings_from_mapping({"directory": {"domain_map": str(map_file), "refresh": 5}})
    assert build.take_early(other.directory) is None and build._early is None


def test_the_early_read_starts_from_the_directory_section_alone(
    map_file: Path, tmp_path: Path
) -> None:
    """The milter starts the first read from the config file's [directory] before it
    reads and checks the rest: with the settings the whole file gives (so the
    directory takes it over), and nothing at all when the section is not valid (the
    whole read then says why)."""
    config = tmp_path / "sendwarden.toml"
    document = {
        "redis": {"url": "redis://127.0.0.1:1/0"},
        "directory": {"domain_map": str(map_file), "refresh": "5m", "sql_timeout_ms": 900},
    }
    config.write_text(dumps_toml(document))
    assert load_directory_settings(config) == load_settings(config).directory
    build.start_early_from(config)
    try:
        early = build._early
        assert early is not None and early.settings == load_settings(config).directory
        assert build.take_early(load_settings(config).directory) is early
    finally:
        build._discard_early()
        if early is not None:
            early.discard()
    for bad in (
        {**document, "directory": {"domain_map": str(map_file), "refresh": "soon"}},
        {**document, "directory": {"domain_map": str(map_file), "unknown": 1}},
        {**document, "directory": "not a table"},
    ):
        config.write_text(dumps_toml(bad))
        assert load_directory_settings(config) is None
        build.start_early_from(config)
        assert build._early is None
        with pytest.raises(ConfigError):
            load_settings(config)
    config.write_text("this is [not TOML")
    assert load_directory_settings(config) is None
    assert load_directory_settings(tmp_path / "missing.toml") is None
    # No [directory] at all: the defaults, as the whole file gives them, and no read.
    config.write_text(dumps_toml({"redis": document["redis"]}))
    assert load_directory_settings(config) == load_settings(config).directory
    build.start_early_from(config)
    assert build._early is None


def test_systemds_state_directory_keeps_the_directory_by_default(
    map_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no state_directory, a service systemd gives a StateDirectory= keeps the
    last good directory there: every start after the first answers at once on it (and
    no early read is started then)."""
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path / 'state'}:{tmp_path / 'second'}")
    first = live(map_file, Recorder())
    first.close()
    assert (tmp_path / "state" / "directory" / "directory.db").exists()
    settings = settings_from_mapping({"directory": {"domain_map": str(map_file)}})
    build.start_early(settings.directory)
    assert build._early is None  # the kept one answers at once: nothing to start early
    second = LiveDirectory(settings, notifiers=[Recorder()])
    try:
        second.load()
        assert second._stale_start  # started on the kept directory
        assert account_directory(second).owner_of_domain("acme.example") is not None
    finally:
        second.close()


LOGINS = st.one_of(
    st.sampled_from(["bob", "Bob", "ftp", "ß", "ss", " pad", "a\nb", "eve@a.example"]),
    st.text(st.characters(blacklist_categories=["Z", "Cc", "Cs"]), min_size=1, max_size=4),
)


@settings(max_examples=12, deadline=None)
@given(
    lines=st.lists(
        st.tuples(
            st.sampled_from(["a.example", "b.example", "Ü.example"]),
            st.sampled_from(["acme", "web1"]),
        )
    ),
    rows=st.lists(
        st.tuples(
            st.sampled_from(["acme", "web1", "initech"]),
            st.one_of(st.none(), st.sampled_from(["a.example", "c.example"])),
            st.one_of(st.none(), LOGINS),
            st.one_of(st.none(), st.integers(1000, 1002)),
        ),
        max_size=12,
    ),
)
def test_the_builder_childs_forked_logins_are_the_serial_ones(
    lines: list[tuple[str, str]], rows: list[tuple[object, ...]]
) -> None:
    """The builder child settles and pages the logins in a forked process, beside the
    rest: its snapshot holds what a build in one process writes, table by table."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "map").write_text("".join(f"{d}: {a}\n" for d, a in lines))
        with sqlite3.connect(folder / "panel.db") as connection:
            connection.execute("CREATE TABLE t (n INTEGER, account, domain, login, uid)")
            connection.executemany(
                "INSERT INTO t VALUES (?, ?, ?, ?, ?)",
                [(n, *row) for n, row in enumerate(rows)],
            )
        settings_ = settings_from_mapping(
            {
                "directory": {
                    "domain_map": str(folder / "map"),
                    "sql_url": f"sqlite:///{folder / 'panel.db'}",
                    "sql_query": "SELECT account, domain, login, uid FROM t ORDER BY n",
                }
            }
        ).directory

        try:
            serial = build.build(settings_, folder / "serial.db")
        except SourceError as error:
            with pytest.raises(build.BuildFailed, match=re.escape(str(error))):
                build.build_in_child(settings_, folder / "forked.db", None, timeout=60)
            return
        forked = build.build_in_child(settings_, folder / "forked.db", None, timeout=60)
        assert forked == serial
        assert snapshot_tables(folder / "forked.db") == snapshot_tables(folder / "serial.db")
