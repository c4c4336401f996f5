"""``sendwarden api -c FILE``: serve the consent HTTP API with uvicorn.

Binds to ``api.listen`` (127.0.0.1:8025 by default); put a TLS-terminating
proxy in front of it before listening anywhere else. ``sendwarden api token
create`` mints tokens (:mod:`sendwarden.commands.token`).
"""

from __future__ import annotations

import argparse
import logging
import signal
from collections.abc import Callable
from datetime import datetime
from types import FrameType
from typing import Any

import redis

from sendwarden import metrics
from sendwarden.alerts.risk import RiskStore
from sendwarden.cli import add_actions, add_command
from sendwarden.commands import token
from sendwarden.config import ConfigError, Settings, config_warnings, load_settings, split_listen
from sendwarden.consent.model import ConsentStore
from sendwarden.decisionlog import configure_logging
from sendwarden.health import ConsentProbe, standard_checks
from sendwarden.monitoring import MonitorStore
from sendwarden.ratelimit import counter_from_settings
from sendwarden.store.redis import connect
from sendwarden.store.suspensions import suspension_store_from_settings
from sendwarden.ui.history import SuspensionDesk, utc_now
from sendwarden.ui.routes import Sessions, UiContext

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = add_command(
        subparsers,
        "api",
        run,
        config=True,
        help="serve the consent HTTP API (or: api token create)",
        description="Serve the consent HTTP API in the foreground; SIGHUP reloads the "
        "tokens, SIGTERM stops it.",
    )
    token.register_under(add_actions(parser, required=False))


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def run(args: argparse.Namespace) -> int:
    import uvicorn  # imported here: the other commands need no web server

    from sendwarden.consent.api import create_app, reload_tokens
    from sendwarden.consent.store import open_from_settings

    settings = load_settings(args.config, read_keys=False)
    if not settings.api.tokens:
        raise ConfigError(
            "api.tokens", "no tokens configured; create one with `sendwarden api token create`"
        )
    configure_logging(settings.log.level, decisions=False)
    host, port = split_listen(settings.api.listen)
    for warning in config_warnings(settings):
        log.warning("%s", warning)
    store = open_from_settings(settings.consent)
    client = connect(settings.redis)
    probe = ConsentProbe(lambda: settings.consent)
    metrics_server = metrics.serve(
        settings.metrics.api_listen,
        lambda recorder: standard_checks(lambda: client, probe, recorder),
    )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it to the handler that
    # was there before: make that one a clean exit, so the store is closed and the
    # status is 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    ui = ui_context(settings, store, client)
    try:
        app = create_app(settings.api.tokens, store, ui=ui)

        def reload(signum: int, frame: FrameType | None) -> None:
            """SIGHUP: new tokens from the config file; a bad file keeps the old ones.
            (Other settings, such as api.listen and consent.database, need a restart.)"""
            try:
                fresh = load_settings(args.config, read_keys=False)
            except ConfigError as error:
                log.error("reload refused, keeping the running tokens: %s", error)
                return
            if not fresh.api.tokens:
                log.error("reload refused, keeping the running tokens: api.tokens is empty")
                return
            reload_tokens(app, fresh.api.tokens)
            ui.identify = app.state.sendwarden.tokens.identify  # staff sign-in at /ui too
            log.info("tokens reloaded from %s (%d tokens)", args.config, len(fresh.api.tokens))

        signal.signal(signal.SIGHUP, reload)
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_config=None,  # our logging set-up, not uvicorn's
            log_level=settings.log.level,
            server_header=False,
        )
    finally:
        if metrics_server is not None:
            metrics_server.close()
        probe.close()
        ui.desk.store.close()
        client.close()
        store.close()
    return 0


def ui_context(
    settings: Settings,
    store: ConsentStore,
    client: redis.Redis,
    clock: Callable[[], datetime] = utc_now,
) -> UiContext:
    """What the support page at /ui reads and changes (``clock``: when changes happen)."""
    from sendwarden.consent.api import TokenRing

    prefix = settings.redis.key_prefix
    return UiContext(
        settings=settings,
        consent=store,
        counter=counter_from_settings(settings, client),
        risks=RiskStore(client, prefix),
        monitor=MonitorStore(client, prefix),
        # Suspensions and their history live in the durable database (opened on first use).
        desk=SuspensionDesk(suspension_store_from_settings(settings, client), clock),
        identify=TokenRing(settings.api.tokens).identify,
        sessions=Sessions(lifetime=settings.ui.session_minutes * 60.0),
    )
