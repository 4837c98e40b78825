"""[[terminals]] driver keys: SPIn Cloud (`spin`, by tpn) and SPIn Local (`spin-local`, by
register_id), the rule for plain HTTP off loopback, and the driver each config becomes."""

from __future__ import annotations

import logging

import pytest

from gatewayd.config import parse
from gatewayd.errors import ConfigError
from gatewayd.terminals.drivers import make_driver, warn_plain_http
from gatewayd.terminals.spin.driver import SpinDriver
from gatewayd.terminals.spin_local.driver import SpinLocalDriver

HEAD = 'store_id = "s"\n[[terminals]]\nid = "lane-1"\nauthkey = "SeCrEtK3y9"\n'


def one(text: str) -> object:
    return parse(HEAD + text, "store.toml").terminals[0]


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        ('base_url = "https://api.spinpos.net"\n', "terminals[0].tpn", "required"),
        ('driver = "spin-local"\nbase_url = "http://127.0.0.1:9000"\n', "terminals[0].register_id", "required"),
        ('base_url = "https://a"\ntpn = "T1"\nregister_id = "1"\n', "terminals[0].register_id", "spin-local"),
        (
            'driver = "spin-local"\nbase_url = "http://192.168.1.31:9000"\nregister_id = "540048"\n',
            "terminals[0].base_url",
            "allow_plain_http_on_lan",
        ),
        ('base_url = "http://10.0.0.9:8471"\ntpn = "T1"\n', "terminals[0].base_url", "https://"),
        ('driver = "spin-local"\nbase_url = "http://10.0.0.9:"\nregister_id = "1"\n', "terminals[0].base_url", ""),
        ('driver = "spin-local"\nbase_url = "http://h:1/x?y"\nregister_id = "1"\n', "terminals[0].base_url", ""),
        ('driver = "spin-locale"\nbase_url = "http://127.0.0.1:1"\nregister_id = "1"\n', "terminals[0].driver", ""),
    ],
)
def test_refused(text: str, key: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(HEAD + text, "store.toml")
    assert caught.value.fields["key"] == key, str(caught.value)
    assert says in str(caught.value) and "SeCrEtK3y9" not in str(caught.value)


async def test_accepted_and_made_into_drivers(caplog: pytest.LogCaptureFixture) -> None:
    local = one(
        'driver = "spin-local"\nbase_url = "http://192.168.1.31:9000/spin"\nregister_id = "540048"\n'
        'tpn = "Z11111111111"\nallow_plain_http_on_lan = true\n'
    )
    cloud = one('base_url = "https://api.spinpos.net"\ntpn = "Z11111111111"\n')
    loopback = one('driver = "spin-local"\nbase_url = "http://127.0.0.1:9000"\nregister_id = "1"\n')
    drivers = [make_driver(c) for c in (local, cloud, loopback)]  # type: ignore[arg-type]
    try:
        assert isinstance(drivers[0], SpinLocalDriver) and "http://192.168.1.31:9000/spin/cgi.html" in repr(drivers[0])
        assert isinstance(drivers[1], SpinDriver) and isinstance(drivers[2], SpinLocalDriver)
        caplog.set_level(logging.WARNING)
        for config in (local, cloud, loopback):
            warn_plain_http(config)  # type: ignore[arg-type]
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1 and "192.168.1.31" in warnings[0] and "auth key" in warnings[0]
        assert "SeCrEtK3y9" not in warnings[0]
    finally:
        for driver in drivers:
            await driver.aclose()
