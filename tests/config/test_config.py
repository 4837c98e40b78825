"""Config errors name the file, the key and the expectation; secrets never show."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gatewayd.config import load, parse
from gatewayd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = '[[terminals]]\nid = "lane-1"\nbase_url = "http://127.0.0.1:1"\ntpn = "TPN000000001"\n'


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, "store.toml")
    return info.value


def test_misspelt_key_is_named() -> None:
    err = _error('store_id = "s"\n[database]\nstatment_cache = false\n')
    assert str(err) == "store.toml: database.statment_cache: unknown key"


def test_wrong_type_names_key_and_expectation() -> None:
    err = _error(f'store_id = "s"\n{TERMINAL}authkey = "KEY0000001"\ntimeout_s = "soon"\n')
    assert str(err) == "store.toml: terminals[0].timeout_s: Expected int, got str"


def test_out_of_range_and_missing() -> None:
    assert "terminals[0].timeout_s: Expected int <= 720" in str(
        _error(f'store_id = "s"\n{TERMINAL}authkey = "KEY0000001"\ntimeout_s = 900\n')
    )
    assert "store.toml: store_id: required key is missing" == str(_error("[api]\n"))
    assert "terminals[0].authkey: one of" in str(_error(f'store_id = "s"\n{TERMINAL}'))
    assert "duplicate terminal id" in str(_error(f'store_id = "s"\n{TERMINAL}authkey="K"\n{TERMINAL}authkey="K"\n'))
    assert "checkout.card_mode" in str(_error('store_id = "s"\n[checkout]\ncard_mode = "later"\n'))


def test_secrets_stay_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANE_KEY", "SUPERSECRET")
    key_file = tmp_path / "key"
    key_file.write_text("FILESECRET9\n")
    config = parse(
        f'store_id = "s"\n[database]\ndsn = "postgresql://u:PGPASSWORD@h/db?sslmode=require"\n'
        f'{TERMINAL}authkey_env = "LANE_KEY"\n'
        f'{TERMINAL.replace("lane-1", "lane-2")}authkey_file = "{key_file}"\n'
    )
    assert config.terminals[0].authkey is not None and config.terminals[0].authkey.reveal() == "SUPERSECRET"
    assert config.terminals[1].authkey is not None and config.terminals[1].authkey.reveal() == "FILESECRET9"
    text = repr(config) + str(config)
    for secret in ("SUPERSECRET", "FILESECRET9", "PGPASSWORD"):
        assert secret not in text
    err = _error(f'store_id = "s"\n{TERMINAL}authkey = 1234567890\n')
    assert "1234567890" not in str(err)


def test_systemd_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lane-1-key").write_text("CREDKEY001")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    config = parse(f'store_id = "s"\n{TERMINAL}authkey_credential = "lane-1-key"\n')
    assert config.terminals[0].authkey is not None
    assert config.terminals[0].authkey.reveal() == "CREDKEY001"


def test_shipped_configs_are_valid() -> None:
    demo = load(ROOT / "config" / "demo.toml")
    assert [t.id for t in demo.terminals] == ["lane-1", "lane-2", "lane-3", "lane-4"]
    prod = load(ROOT / "config" / "gatewayd.toml", resolve_secrets=False)
    assert prod.checkout.card_mode == "sale"


def test_check_config_cli(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "gatewayd", "check-config", str(ROOT / "config" / "gatewayd.toml")],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "lane-1" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('store_id = "s"\n[metrics]\nlisten = "127.0.0.1:9470"\nlisen = "x"\n')
    result = subprocess.run(
        [sys.executable, "-m", "gatewayd", "check-config", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert f"{bad}: metrics.lisen: unknown key" in result.stderr
