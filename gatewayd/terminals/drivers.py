"""The one place a terminal's configuration becomes its driver: the dialect is chosen here and
nowhere else (the lanes, the checkout and the CLI see only `TerminalDriver`)."""

from __future__ import annotations

import logging

import aiohttp

from gatewayd.config import TerminalConfig
from gatewayd.config.load import plain_http_host
from gatewayd.terminals.driver import TerminalDriver
from gatewayd.terminals.spin.driver import SpinDriver
from gatewayd.terminals.spin_local.driver import SpinLocalDriver

log = logging.getLogger("gatewayd.terminals")


def make_driver(config: TerminalConfig, session: aiohttp.ClientSession | None = None) -> TerminalDriver:
    """The driver for one configured terminal (`session`: shared keep-alive connections)."""
    assert config.authkey is not None, "secrets are resolved when the config is loaded"
    authkey = config.authkey.reveal()
    if config.driver == "spin-local":
        assert config.register_id is not None, "checked when the config is loaded"
        return SpinLocalDriver(
            config.id,
            config.base_url,
            config.register_id,
            authkey,
            config.timeout_s,
            tpn=config.tpn,
            http_margin_s=config.http_margin_s,
            session=session,
        )
    assert config.tpn is not None, "checked when the config is loaded"
    return SpinDriver(
        config.id,
        config.base_url,
        config.tpn,
        authkey,
        config.timeout_s,
        http_margin_s=config.http_margin_s,
        session=session,
    )


def warn_plain_http(config: TerminalConfig) -> None:
    """Say, once per start or reload of a terminal, what goes over the LAN in clear for it."""
    host = plain_http_host(config)
    if host is not None:
        log.warning(
            "terminal %s: plain HTTP to %s (allow_plain_http_on_lan): the auth key, register id, amounts,"
            " reference ids and the terminal's answers (auth codes, card brand and last four, and whatever"
            " else it sends back) cross the LAN unencrypted; card numbers never do (the terminal reads the card)",
            config.id,
            host,
        )
