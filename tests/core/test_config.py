"""Configuration: flags, environment and TOML fill the same options; errors exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from citysense.cli import ENTRY_POINTS, main
from citysense.config import (
    COMMANDS,
    OPTIONS,
    load_settings,
    mask_url,
    parse_api_keys,
    parse_mqtt_url,
)
from citysense.errors import ConfigError


def test_precedence_defaults_file_env_cli(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('gateway = "gw-file"\nbind = "127.0.0.1:9000"\nresend-interval = 5\n')
    s = load_settings("edge", {"config": str(conf)}, environ={})
    assert (s.gateway, s.bind, s.resend_interval) == ("gw-file", "127.0.0.1:9000", 5.0)
    s = load_settings("edge", {"config": str(conf)}, environ={"CITYSENSE_GATEWAY": "gw-env"})
    assert s.gateway == "gw-env"
    s = load_settings(
        "edge", {"config": str(conf), "gateway": "gw-cli"}, environ={"CITYSENSE_GATEWAY": "gw-env"}
    )
    assert s.gateway == "gw-cli"
    assert load_settings("edge", {}, environ={}).gateway == "gw-01"


def test_lists_and_booleans_from_env() -> None:
    s = load_settings(
        "api", {}, environ={"CITYSENSE_API_KEYS": "secretkey1:operator,secretkey2:viewer"}
    )
    assert parse_api_keys(s.api_keys) == {"secretkey1": "operator", "secretkey2": "viewer"}
    s = load_settings("ingest", {}, environ={"CITYSENSE_INFLUX_GZIP": "yes"})
    assert s.influx_gzip is True


@pytest.mark.parametrize(
    ("cli", "env", "needle"),
    [
        ({"gateway": "GW!"}, {}, "--gateway"),
        ({"bind": "localhost"}, {}, "--bind"),
        ({"mqtt": "http://x"}, {}, "--mqtt"),
        ({"influx": "ftp://x"}, {}, "--influx"),
        ({}, {"CITYSENSE_RESEND_INTERVAL": "soon"}, "CITYSENSE_RESEND_INTERVAL"),
        ({}, {"CITYSENSE_RESEND_INTERVAL": "0"}, "--resend-interval"),
        ({"api_keys": ["short:operator"]}, {}, "8 characters"),
        ({"api_keys": ["longenoughkey:admin"]}, {}, "KEY:ROLE"),
        ({"serial": ["/dev/ttyUSB0:bc99"]}, {}, "--serial"),
        ({"registry": "/nonexistent.csv"}, {}, "no such file"),
        ({"config": "/nonexistent.toml"}, {}, "cannot read config"),
    ],
)
def test_bad_configuration_is_a_one_line_config_error(
    cli: dict[str, object], env: dict[str, str], needle: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings("edge", cli, environ=env)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_in_file(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text("colour = 'red'\n")
    with pytest.raises(ConfigError, match="unknown option"):
        load_settings("edge", {"config": str(conf)}, environ={})


def test_urls_and_secrets() -> None:
    b = parse_mqtt_url("mqtts://u:p@broker.example:8884")
    assert (b.host, b.port, b.tls, b.username, b.password) == (
        "broker.example",
        8884,
        True,
        "u",
        "p",
    )
    assert parse_mqtt_url("mqtt://h").port == 1883
    assert mask_url("http://admin:hunter2@db:8086") == "http://admin:***@db:8086"
    s = load_settings(
        "api", {"api_keys": ["secretkey1:operator"], "influx": "http://a:pw@h:8086"}, environ={}
    )
    shown = str(s.secret_free())
    assert "secretkey1" not in shown and "pw@" not in shown


def test_every_option_has_help_and_a_command() -> None:
    for option in OPTIONS:
        assert option.help and option.commands <= set(COMMANDS), option.name
    assert set(ENTRY_POINTS) == set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([*command.split(), "--help"])
    assert done.value.code == 0
    assert "usage: citysense" in capsys.readouterr().out


def test_bad_usage_exits_2_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "citysense", "api", "--bind", "nowhere"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "--bind" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "citysense", "frobnicate"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2


def test_every_command_resolves_to_its_entry() -> None:
    from citysense.cli import resolve_entry

    for command in ENTRY_POINTS:
        assert callable(resolve_entry(command)), command


@pytest.mark.parametrize(
    ("cli", "needle"),
    [
        ({"retention_raw": "90x"}, "--retention-raw"),
        ({"retention_raw": "0d"}, "--retention-raw"),
        ({"retention_raw": "30d", "retention_rollup": "7d"}, "at least --retention-raw"),
    ],
)
def test_bad_retention_is_a_config_error(cli: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings("ingest", cli, environ={})
    assert needle in str(err.value)
    ok = load_settings("ingest", {"retention_raw": "52w", "retention_rollup": "3650d"}, environ={})
    assert (ok.retention_raw, ok.rollups) == ("52w", True)
