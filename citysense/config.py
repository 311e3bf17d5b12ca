"""Configuration: one table of options, read once at start and passed down.

:class:`Settings` *is* the table: each field carries its help text, the subcommands that take
it and how to parse it. The command line (``--name``), the environment (``CITYSENSE_NAME``)
and a TOML file (``--config FILE``, the same keys, ``-`` or ``_`` alike) all fill the same
fields; precedence is defaults < file < environment < command line. :func:`load_settings`
validates everything and raises :class:`~citysense.errors.ConfigError` with a one-line
reason, which the command turns into exit code 2.

To add an option, add one field to :class:`Settings` (:mod:`citysense.config_table`): the CLI, environment and file pick it up.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from citysense.config_checks import validate
from citysense.config_commands import ALERTS_DEFAULT_BIND, COMMANDS, DEMO, EDGE_PROBE, ENV_PREFIX
from citysense.config_options import OPTIONS, OPTIONS_BY_NAME, Option, options_for
from citysense.config_parse import (
    DEFAULT_API_BIND,
    ROLES,
    BrokerUrl,
    broker_url,
    mask_url,
    parse_api_keys,
    parse_hostport,
    parse_mqtt_url,
    parse_retention,
    parse_serial,
    read_secret_file,
)
from citysense.config_table import Settings
from citysense.errors import ConfigError

__all__ = [
    "ALERTS_DEFAULT_BIND",
    "COMMANDS",
    "DEFAULT_API_BIND",
    "DEMO",
    "DEMO_STATE_DIR",
    "EDGE_PROBE",
    "ENV_PREFIX",
    "OPTIONS",
    "OPTIONS_BY_NAME",
    "ROLES",
    "SECRET_FILES",
    "SYSTEM_STATE_DIR",
    "BrokerUrl",
    "Option",
    "Settings",
    "broker_url",
    "default_state_dir",
    "load_settings",
    "mask_url",
    "options_for",
    "parse_api_keys",
    "parse_hostport",
    "parse_mqtt_url",
    "parse_retention",
    "parse_serial",
    "read_secret_file",
    "secrets_on_command_line",
    "validate",
]

# --------------------------------------------------------------------------- parsing


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not a boolean")


def _parse_list(value: object) -> tuple[str, ...]:
    if isinstance(value, list | tuple):
        items = [str(v) for v in value]
    else:
        items = [str(value)]
    out: list[str] = []
    for item in items:
        out.extend(p.strip() for p in item.split(",") if p.strip())
    return tuple(out)


_PARSERS: Mapping[str, Callable[[Any], object]] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": lambda v: v if isinstance(v, bool) else _parse_bool(str(v)),
    "list": _parse_list,
}


def _convert(option: Option, raw: object, source: str) -> object:
    if option.kind in ("int", "float") and isinstance(raw, bool):
        raise ConfigError(f"{source}: {option.name} must be a number")
    try:
        value = _PARSERS[option.kind](raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {option.name}: {exc}") from exc
    if option.choices and value not in option.choices:
        raise ConfigError(
            f"{source}: {option.name} must be one of {', '.join(option.choices)}, not {value!r}"
        )
    return value


def _read_file(path: str) -> dict[str, object]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    out: dict[str, object] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in OPTIONS_BY_NAME or name == "config":
            raise ConfigError(f"config file {path}: unknown option {key!r}")
        out[name] = value
    return out


def load_settings(
    command: str,
    cli: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge defaults, file, environment and command line for ``command``; validate."""
    cli = {k: v for k, v in (cli or {}).items() if v is not None}
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    config_path = cli.get("config") or env.get(ENV_PREFIX + "CONFIG")
    if config_path:
        for name, raw in _read_file(str(config_path)).items():
            values[name] = _convert(OPTIONS_BY_NAME[name], raw, f"config file {config_path}")
        values["config"] = str(config_path)
    for option in OPTIONS:
        if option.env in env and option.name != "config":
            values[option.name] = _convert(option, env[option.env], option.env)
    for name, raw in cli.items():
        known = OPTIONS_BY_NAME.get(name)
        if known is not None:
            values[name] = _convert(known, raw, known.flag)
    for name, twin in SECRET_FILES.items():
        path = values.get(twin)
        if path and name not in values:
            values[name] = read_secret_file(str(path), OPTIONS_BY_NAME[twin].flag)
    if not values.get("state_dir"):
        values["state_dir"] = DEMO_STATE_DIR if command == DEMO else str(default_state_dir(env))
    settings = Settings(**values)  # type: ignore[arg-type]
    validate(settings, command)
    return settings


#: A secret option -> the option naming a file that holds it (``CITYSENSE_<OPTION>_FILE``).
SECRET_FILES: Mapping[str, str] = {
    "mqtt_password": "mqtt_password_file",
    "influx_password": "influx_password_file",
    "influx_token": "influx_token_file",
}


def secrets_on_command_line(cli: Mapping[str, object]) -> list[str]:
    """The flags given on the command line that carry a secret (other users see them in
    ``ps``): secret options, and URLs with a password in them. Names only, never values."""
    flags: list[str] = []
    for name, raw in cli.items():
        option = OPTIONS_BY_NAME.get(name)
        if option is None or raw is None or raw == [] or raw == ():
            continue
        if option.secret:
            flags.append(option.flag)
        elif option.name in ("mqtt", "influx"):
            values = raw if isinstance(raw, list | tuple) else [raw]
            if any(urlsplit(str(v)).password is not None for v in values):
                flags.append(option.flag)
    return flags


#: The state folder of the demo (and of a service with nowhere better), relative to the
#: working directory.
DEMO_STATE_DIR = "citysense-state"
#: The system-wide state folder the Debian package creates.
SYSTEM_STATE_DIR = "/var/lib/citysense"


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where a service keeps its state when ``--state-dir`` is not given:
    ``$STATE_DIRECTORY`` (systemd's ``StateDirectory=``; its first entry), else
    ``/var/lib/citysense`` when it exists and is writable, else ``./citysense-state``."""
    env = os.environ if environ is None else environ
    given = env.get("STATE_DIRECTORY", "").split(":")[0]
    if given:
        return Path(given)
    system = Path(SYSTEM_STATE_DIR)
    if system.is_dir() and os.access(system, os.W_OK | os.X_OK):
        return system
    return Path(DEMO_STATE_DIR)
