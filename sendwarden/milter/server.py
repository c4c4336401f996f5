"""Runs libmilter: sockets, signals, reload.

libmilter's own signal thread would stop on SIGHUP, so libmilter runs in a
worker thread (which blocks the signals for itself and its threads) and the
main thread takes SIGTERM/SIGINT (stop cleanly) and SIGHUP (reload the config;
a bad new config is refused with a log line and the old one stays).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from types import FrameType

import Milter
import milter as libmilter

from sendwarden import metrics
from sendwarden.config import ConfigError, Settings, load_settings
from sendwarden.health import ConsentProbe, standard_checks
from sendwarden.milter.adapter import SendwardenMilter, set_pipeline_source
from sendwarden.milter.generations import Generations
from sendwarden.runtime import Runtime, build_runtime

log = logging.getLogger(__name__)


class MilterServer:
    def __init__(self, config_path: str | Path, settings: Settings) -> None:
        self.config_path = Path(config_path)
        self.generations: Generations[Runtime] = Generations(build_runtime(settings))
        self._stopping = threading.Event()
        self._stop_requested = False  # SIGTERM/SIGINT arrived
        set_pipeline_source(self.generations.lease)

    @property
    def runtime(self) -> Runtime:
        """The configuration new connections get."""
        return self.generations.current

    # -- reload -------------------------------------------------------------------

    def reload(self) -> bool:
        """Swap in a new configuration; connections in flight keep the old one."""
        try:
            settings = load_settings(self.config_path)
        except ConfigError as error:
            log.error("reload refused, keeping the running configuration: %s", error)
            recorder = metrics.current()
            if recorder is not None:
                recorder.reloads.labels("refused").inc()
            return False
        if settings.milter.socket != self.runtime.settings.milter.socket:
            log.warning("milter.socket changed; the new socket takes effect only after a restart")
        runtime = build_runtime(settings, self.runtime)
        runtime.open_stores_soon()
        self.generations.replace(runtime)
        recorder = metrics.current()
        if recorder is not None:
            recorder.loaded_configuration(reload=True)
        log.info(
            "configuration reloaded from %s (%d earlier ones still finish connections)",
            self.config_path,
            self.generations.retired_in_use,
        )
        return True

    # -- run ----------------------------------------------------------------------

    def serve(self) -> int:
        settings = self.runtime.settings
        self.runtime.open_stores_soon()  # the first messages need not wait for it
        probe = ConsentProbe(lambda: self.runtime.settings.consent)
        metrics_server = metrics.serve(
            settings.metrics.listen,
            lambda recorder: standard_checks(lambda: self.runtime.redis, probe, recorder),
        )
        if metrics_server is not None:
            metrics_server.metrics.loaded_configuration(reload=False)
            if self.runtime.live_directory is not None:
                self.runtime.live_directory.announce()  # loaded before /metrics was up
        try:
            return self._serve(settings)
        finally:
            if metrics_server is not None:
                metrics_server.close()
                metrics.install(None)
            probe.close()

    def _serve(self, settings: Settings) -> int:
        spec = settings.milter.socket
        tune_garbage_collector()  # before the socket opens: the MTA may connect at once
        _prepare_socket_path(spec)
        Milter.factory = SendwardenMilter  # steps negotiated per connection
        _register(settings.milter.name)
        libmilter.setconn(spec)
        libmilter.settimeout(settings.milter.timeout)
        libmilter.setbacklog(128)
        socket_mode = int(settings.milter.socket_mode, 8)
        # bind() creates a unix socket with 0777 & ~umask: set the mode at birth, so
        # the MTA never meets the socket with the wrong permissions.
        previous_umask = os.umask(0o777 & ~socket_mode)
        try:
            libmilter.opensocket(True)
        finally:
            os.umask(previous_umask)
        _after_open(spec, socket_mode)
        identity = _socket_identity(spec)

        failure: list[BaseException] = []

        def run_libmilter() -> None:
            try:
                libmilter.main()
            except BaseException as error:  # reported by the main thread
                # A stop signalled before libmilter's main loop began makes it refuse to
                # run ("cannot run main"): that is a clean stop, not a failure.
                if not self._stop_requested:
                    failure.append(error)
            finally:
                self._stopping.set()

        worker = threading.Thread(target=run_libmilter, name="libmilter", daemon=True)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        worker.start()
        log.info("sendwarden milter listening on %s", spec)
        while not self._stopping.wait(1.0):
            pass
        worker.join(timeout=30)
        self.generations.close()
        _remove_socket_path(spec, identity)
        if failure:
            log.error("libmilter stopped: %s", failure[0])
            return 1
        log.info("sendwarden milter stopped")
        return 0

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        log.info(
            "signal %s: stopping (connections in flight finish first)", signal.Signals(signum).name
        )
        self._stop_requested = True
        libmilter.stop()
        _wake_listener(self.runtime.settings.milter.socket)
        self._stopping.set()

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self.reload()


#: Container objects allocated between two young-generation collections (Python's
#: default is 700: with a message allocating thousands, the collector ran several
#: times per message, 8 % of the milter's CPU in a perf profile).
GC_YOUNG_THRESHOLD = 20_000


def tune_garbage_collector() -> None:
    """Freeze what start-up built (configuration, accounts, keys, scripts: it lives as
    long as the process), so no collection walks it again, and collect young objects
    less often. Reference counting still frees almost everything a message allocates
    at once; the collector is only for cycles. Not repeated on reload: a frozen
    configuration would never be collected once replaced."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _register(name: str) -> None:
    """Wire libmilter's callbacks to the per-connection Milter instances (as
    ``Milter.runmilter`` does, without its socket handling)."""
    libmilter.set_connect_callback(Milter.connect_callback)
    libmilter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    libmilter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    libmilter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    libmilter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    libmilter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    libmilter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    libmilter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    libmilter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    libmilter.set_close_callback(Milter.close_callback)
    libmilter.register(
        name,
        data=lambda ctx: ctx.getpriv().data(),
        unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
        negotiate=Milter.negotiate_callback,
    )


def _unix_path(spec: str) -> Path | None:
    scheme, _, rest = spec.partition(":")
    return Path(rest) if scheme in ("unix", "local") else None


def _inet_port(spec: str) -> int | None:
    scheme, _, rest = spec.partition(":")
    return int(rest.partition("@")[0]) if scheme in ("inet", "inet6") else None


class SocketInUse(RuntimeError):
    """Another process answers on the milter socket; starting would steal it."""


def _prepare_socket_path(spec: str) -> None:
    """Refuse to start on a unix socket a live milter answers on: libmilter would
    unlink it and bind a new one, silently taking the MTA's connections from the
    running milter (and stopping would then delete the live one's socket). A stale
    socket file nobody answers on is left for libmilter to replace."""
    path = _unix_path(spec)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket() and _answers(path):
        raise SocketInUse(
            f"{path}: another milter is listening on this socket; stop it first "
            "(or give this one another milter.socket)"
        )


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:  # ECONNREFUSED: a stale file; ENOENT: gone meanwhile
            return False
    return True


def _socket_identity(spec: str) -> tuple[int, int] | None:
    """(device, inode) of our unix socket file, to recognise it at shutdown."""
    path = _unix_path(spec)
    if path is None:
        return None
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _after_open(spec: str, socket_mode: int) -> None:
    path = _unix_path(spec)
    if path is not None:
        os.chmod(path, socket_mode)  # the MTA's user (postfix) must be able to connect
        return
    port = _inet_port(spec)
    if port is not None:
        _set_nodelay_on_listener(port)


def _set_nodelay_on_listener(port: int) -> None:
    """Accepted sockets inherit TCP_NODELAY from the listener on Linux; without it
    every milter reply waits out a Nagle/delayed-ACK stall (~40-90 ms a message)."""
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError, ValueError):
            duplicate = os.dup(int(name))
            try:
                sock = socket.socket(fileno=duplicate)
            except OSError:
                os.close(duplicate)
                continue
            with sock:
                inet = sock.family in (socket.AF_INET, socket.AF_INET6)
                if inet and sock.type == socket.SOCK_STREAM and sock.getsockname()[1] == port:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    log.debug("TCP_NODELAY set on the milter listener (port %s)", port)


def _wake_listener(spec: str) -> None:
    """libmilter notices a stop only when its accept() returns (or every 5 s): a
    throw-away connection makes it notice now."""
    path, port = _unix_path(spec), _inet_port(spec)
    with contextlib.suppress(OSError):
        if path is not None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                sock.connect(str(path))
        elif port is not None:
            host = spec.partition("@")[2] or "127.0.0.1"
            socket.create_connection((host, port), timeout=0.5).close()


def _remove_socket_path(spec: str, identity: tuple[int, int] | None) -> None:
    """Remove our socket file, and only ours: one another process bound since
    (after removing ours) is its, and stays."""
    path = _unix_path(spec)
    if path is not None and identity is not None and _socket_identity(spec) == identity:
        with contextlib.suppress(OSError):
            path.unlink()
