"""Configuration: one table of options, read once at start and passed down.

:class:`Settings` *is* the table: each field carries its help text, the subcommands that take
it and how to parse it. The command line (``--name``), the environment (``CITYSENSE_NAME``)
and a TOML file (``--config FILE``, the same keys, ``-`` or ``_`` alike) all fill the same
fields; precedence is defaults < file < environment < command line. :func:`load_settings`
validates everything and raises :class:`~citysense.errors.ConfigError` with a one-line
reason, which the command turns into exit code 2.

To add an option, add one field here: the CLI, environment and file pick it up.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from citysense.errors import ConfigError
from citysense.model import GATEWAY_ID_RE, SERIAL_DIALECTS

ENV_PREFIX = "CITYSENSE_"

# Subcommand names, as typed on the command line.
DEMO = "demo"
EDGE = "edge"
EDGE_PROBE = "edge probe"
INGEST = "ingest"
DEAD_LETTERS = "ingest dead-letters"
API = "api"
SIM_FLEET = "simulate fleet"
SIM_MODULE = "simulate module"
FLEET_GENERATE = "fleet generate"
ALERTS = "alerts"
FLEET_CREDENTIALS = "fleet credentials"
DEPLOY_BROKER = "deploy broker"
DEPLOY_INFLUX = "deploy influx"
API_KEYS_ADD = "api keys add"
COMMANDS: tuple[str, ...] = (
    DEMO,
    EDGE,
    EDGE_PROBE,
    INGEST,
    DEAD_LETTERS,
    API,
    ALERTS,
    SIM_FLEET,
    SIM_MODULE,
    FLEET_GENERATE,
    FLEET_CREDENTIALS,
    DEPLOY_BROKER,
    DEPLOY_INFLUX,
    API_KEYS_ADD,
)
_SERVICES = frozenset({DEMO, EDGE, INGEST, API, ALERTS})
_ALL = frozenset(COMMANDS)
_STORAGE = frozenset({DEMO, INGEST, DEAD_LETTERS, API, ALERTS})
#: ``--bind`` of ``citysense alerts`` when left at the API's default.
ALERTS_DEFAULT_BIND = "127.0.0.1:8001"
_MQTT_CLIENTS = frozenset({DEMO, EDGE, INGEST, ALERTS})


def _opt(
    default: Any,
    help: str,
    commands: frozenset[str] | set[str],
    kind: str = "str",
    *,
    choices: tuple[str, ...] | None = None,
    secret: bool = False,
    metavar: str | None = None,
) -> Any:
    """A settings field with its option metadata (see :class:`Option`)."""
    return field(
        default=default,
        metadata={
            "help": help,
            "commands": frozenset(commands),
            "kind": kind,
            "choices": choices,
            "secret": secret,
            "metavar": metavar,
        },
    )


@dataclass(frozen=True, slots=True)
class Settings:
    """Every option of every subcommand, with its default."""

    # --- shared by the services
    config: str | None = _opt(None, "TOML file holding any of these options", _ALL, metavar="FILE")
    log_level: str = _opt("INFO", "log level", _ALL, choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    mqtt: str | None = _opt(
        None,
        "MQTT broker, mqtt://[user:pass@]host[:port] or mqtts://... "
        "(default: mqtt://127.0.0.1:1883; demo: an embedded broker)",
        {DEMO, EDGE, INGEST, ALERTS},
        metavar="URL",
    )
    mqtt_ca: str | None = _opt(
        None, "CA certificate that signed the broker's (mqtts://)", _MQTT_CLIENTS, metavar="FILE"
    )
    mqtt_cert: str | None = _opt(
        None, "client certificate presented to the broker (mqtts://)", _MQTT_CLIENTS, metavar="FILE"
    )
    mqtt_key: str | None = _opt(None, "private key of --mqtt-cert", _MQTT_CLIENTS, metavar="FILE")
    mqtt_username: str | None = _opt(
        None, "MQTT user name (overrides the one in --mqtt)", _MQTT_CLIENTS, metavar="NAME"
    )
    mqtt_password: str | None = _opt(
        None,
        "MQTT password (visible to other users: prefer --mqtt-password-file)",
        _MQTT_CLIENTS,
        secret=True,
    )
    mqtt_password_file: str | None = _opt(
        None, "file holding the MQTT password", _MQTT_CLIENTS, metavar="FILE"
    )
    influx: str | None = _opt(
        None,
        "InfluxDB, http(s)://[user:pass@]host:port (default: the embedded SQLite store)",
        _STORAGE | {DEPLOY_INFLUX},
        metavar="URL",
    )
    influx_ca: str | None = _opt(
        None,
        "CA certificate that signed InfluxDB's (https://)",
        _STORAGE | {DEPLOY_INFLUX},
        metavar="FILE",
    )
    influx_username: str | None = _opt(
        None, "InfluxDB user name (overrides the one in --influx)", _STORAGE, metavar="NAME"
    )
    influx_password: str | None = _opt(
        None,
        "InfluxDB password (visible to other users: prefer --influx-password-file)",
        _STORAGE,
        secret=True,
    )
    influx_password_file: str | None = _opt(
        None, "file holding the InfluxDB password", _STORAGE, metavar="FILE"
    )
    influx_api: str = _opt("auto", "InfluxDB API generation", _STORAGE, choices=("auto", "1", "2"))
    influx_db: str = _opt("citysense", "InfluxDB 1.x database", _STORAGE)
    influx_token: str | None = _opt(
        None,
        "InfluxDB 2.x token (visible to other users: prefer --influx-token-file)",
        _STORAGE,
        secret=True,
    )
    influx_token_file: str | None = _opt(
        None, "file holding the InfluxDB 2.x token", _STORAGE, metavar="FILE"
    )
    influx_org: str | None = _opt(None, "InfluxDB 2.x organisation", _STORAGE)
    influx_bucket: str = _opt("citysense", "InfluxDB 2.x bucket", _STORAGE)
    influx_gzip: bool = _opt(False, "gzip writes to InfluxDB", _STORAGE, "bool")
    influx_timeout: float = _opt(10.0, "InfluxDB request timeout, seconds", _STORAGE, "float")
    log_format: str = _opt(
        "auto",
        "log line format: text, json (one object per line) or journal (syslog priority "
        "prefix, no timestamp); auto: journal when JOURNAL_STREAM is set, else text",
        _ALL,
        choices=("auto", "text", "json", "journal"),
    )
    state_dir: str = _opt(
        "",
        "folder for the outbox, dead letters and the embedded store (default: "
        "$STATE_DIRECTORY, else /var/lib/citysense when writable, else ./citysense-state; "
        "demo: ./citysense-state)",
        _SERVICES | {DEAD_LETTERS},
        metavar="DIR",
    )
    registry: str | None = _opt(
        None,
        "device registry CSV",
        {DEMO, EDGE, API, ALERTS, SIM_FLEET, FLEET_CREDENTIALS, DEPLOY_BROKER},
        metavar="FILE",
    )
    metrics_bind: str | None = _opt(
        None,
        "HOST:PORT of the local /metrics endpoint (edge default 127.0.0.1:9101, "
        "ingest 127.0.0.1:9102; 'off' disables it)",
        {EDGE, INGEST},
        metavar="HOST:PORT",
    )
    # --- edge
    gateway: str = _opt(
        "gw-01", "this gateway's id", {DEMO, EDGE, SIM_FLEET, SIM_MODULE}, metavar="ID"
    )
    coap: str = _opt(
        "0.0.0.0:5683",
        "CoAP address: where the gateway listens (edge), where the devices send (simulate fleet)",
        {EDGE, SIM_FLEET},
        metavar="HOST:PORT",
    )
    serial: tuple[str, ...] = _opt(
        (),
        "an NB-IoT module on a serial port, DEV:DIALECT (repeatable)",
        {EDGE},
        "list",
        metavar="DEV:DIALECT",
    )
    max_uplink_bytes: int = _opt(1024, "largest CoAP uplink accepted, bytes", {EDGE}, "int")
    device_keys: str | None = _opt(
        None,
        "device keys CSV (device,scheme,id,secret; 0600) from 'citysense fleet credentials'",
        {EDGE, SIM_FLEET},
        metavar="FILE",
    )
    device_auth: str | None = _opt(
        None,
        "required: only devices with a key are accepted (the default when keys are loaded); "
        "optional: devices without a key are also accepted on plain CoAP",
        {EDGE},
        choices=("required", "optional"),
    )
    coaps: str | None = _opt(
        None,
        "CoAPS (DTLS 1.2 PSK) address, a specific IP (default: the --coap host, port "
        "5684); the edge listens there when a dtls-psk key is loaded",
        {EDGE, SIM_FLEET},
        metavar="HOST:PORT",
    )
    roaming: bool = _opt(
        False, "accept devices the registry assigns to another gateway", {EDGE}, "bool"
    )
    coap_tcp: bool = _opt(False, "also serve CoAP over TCP on the --coap port", {EDGE}, "bool")
    device_rate: float = _opt(
        4.0,
        "uplinks a device may send per report interval of its kind, on average "
        "(0: no per-device limit)",
        {EDGE},
        "float",
    )
    device_burst: int = _opt(
        10, "uplinks a device may send at once before its rate applies", {EDGE}, "int"
    )
    source_rate: float = _opt(
        20.0,
        "unauthenticated requests per second one source address may send, with device keys "
        "loaded (0: no limit)",
        {EDGE},
        "float",
    )
    dtls_sessions: int = _opt(
        10000, "DTLS session states held at most (the oldest go first)", {EDGE}, "int"
    )
    max_age: float = _opt(
        7 * 24 * 3600.0, "oldest reading accepted, seconds", {DEMO, EDGE, INGEST}, "float"
    )
    outbox_quota_mb: float = _opt(256.0, "outbox disk quota, MiB", {EDGE}, "float")
    outbox_policy: str = _opt(
        "refuse",
        "when the outbox is full: refuse new uplinks (5.03) or evict the oldest readings",
        {EDGE},
        choices=("refuse", "evict-oldest"),
    )
    batch_max_readings: int = _opt(500, "readings per published batch, at most", {EDGE}, "int")
    batch_max_delay: float = _opt(
        0.5, "longest a reading waits before its batch is published, seconds", {EDGE}, "float"
    )
    resend_interval: float = _opt(
        60.0, "re-send a batch not confirmed on .../stored after this many seconds", {EDGE}, "float"
    )
    max_inflight_batches: int = _opt(
        50, "published batches awaiting confirmation, at most", {EDGE}, "int"
    )
    # --- ingest
    client_id: str | None = _opt(
        None,
        "MQTT client id, overriding the derived one (fixed, for a persistent session; default "
        "citysense-ingest-<instance> / citysense-alerts-<instance> / citysense-edge-<gateway>)",
        {EDGE, INGEST, ALERTS},
        metavar="ID",
    )
    instance: str | None = _opt(
        None,
        "this process's instance name, part of its MQTT client id (default: the host name); "
        "two ingestors (or alarm services) on one host need two names",
        {INGEST, ALERTS},
        metavar="NAME",
    )
    receive_maximum: int = _opt(
        2000, "unacknowledged MQTT messages the ingestor accepts at once", {INGEST}, "int"
    )
    write_batch_points: int = _opt(5000, "points per storage write, at most", {INGEST}, "int")
    write_max_delay: float = _opt(
        0.2, "longest a message waits before its write, seconds", {INGEST}, "float"
    )
    retry_max_delay: float = _opt(
        30.0,
        "cap of the back-off between reconnects to the broker (edge), retries of the store "
        "(ingest) or notification attempts (alerts), seconds",
        {EDGE, INGEST, ALERTS},
        "float",
    )
    limit: int = _opt(100, "entries to list", {DEAD_LETTERS}, "int")
    dead_letter_max_mb: float = _opt(
        64.0,
        "dead-letter store size cap, MiB; the oldest are evicted (and counted) beyond it",
        {DEMO, INGEST},
        "float",
    )
    dead_letter_days: float = _opt(
        30.0,
        "dead letters older than this many days are evicted (and counted)",
        {DEMO, INGEST},
        "float",
    )
    unhealthy_after: float = _opt(
        60.0,
        "GET /health answers 503 once the broker or the store has been unreachable this many "
        "seconds",
        {EDGE, INGEST},
        "float",
    )
    # --- reads: rollups and retention (ingest maintains, api reads)
    rollups: bool = _opt(
        True,
        "keep 1-minute and 1-hour rollups beside the raw data (ingest maintains them; "
        "the API answers series from them)",
        {DEMO, INGEST, API},
        "bool",
    )
    retention_raw: str = _opt(
        "90d", "how long raw readings are kept (e.g. 90d)", {DEMO, INGEST, API}, metavar="DURATION"
    )
    retention_rollup: str = _opt(
        "3650d", "how long rollups are kept (e.g. 3650d)", {DEMO, INGEST, API}, metavar="DURATION"
    )
    # --- api
    bind: str = _opt(
        "127.0.0.1:8000",
        f"listen address: HOST:PORT (alerts: {ALERTS_DEFAULT_BIND} when left at the default); "
        "deploy broker: HOST (default 0.0.0.0)",
        {DEMO, API, ALERTS, DEPLOY_BROKER},
        metavar="ADDRESS",
    )
    port: int | None = _opt(
        None, "TLS listener port of the broker (default 8883)", {DEPLOY_BROKER}, "int"
    )
    api_keys: tuple[str, ...] = _opt(
        (),
        "API keys with their roles, KEY:ROLE,... (roles: operator, viewer; visible to other "
        "users: prefer --api-keys-file)",
        {DEMO, API, ALERTS},
        "list",
        secret=True,
        metavar="KEY:ROLE,...",
    )
    api_keys_file: str | None = _opt(
        None,
        "TOML file of hashed API keys (written by 'citysense api keys add'; SIGHUP reloads it "
        "in the API; alerts reads it at start)",
        {DEMO, API, ALERTS},
        metavar="FILE",
    )
    insecure_open: bool = _opt(
        False, "serve a non-loopback --bind with no API keys (anyone may read)", {DEMO, API}, "bool"
    )
    allow_writable_reader: bool = _opt(
        False, "start even when the InfluxDB credentials can write", {API}, "bool"
    )
    point_limit: int = _opt(
        20000, "largest number of points one query may return", {DEMO, API}, "int"
    )
    rate_limit: int = _opt(600, "requests per minute per API key", {DEMO, API, ALERTS}, "int")
    timezone: str = _opt(
        "UTC",
        "the city's IANA time zone, for local-time analytics such as the 02:00-04:00 night flow",
        {DEMO, API, ALERTS},
        metavar="ZONE",
    )
    alerts: str | None = _opt(
        None,
        "URL of `citysense alerts` whose active alarms the dashboard shows (fetched server side)",
        {API},
        metavar="URL",
    )
    # --- alerts
    rules: str | None = _opt(
        None, "alarm rules file (TOML; demo: the default rule set)", {ALERTS, DEMO}, metavar="FILE"
    )
    webhook: tuple[str, ...] = _opt(
        (),
        "a webhook receiving alarm events, URL; dingtalk+https://... or wecom+https://... "
        "for those chat robots (repeatable)",
        {ALERTS},
        "list",
        secret=True,  # robot URLs carry their tokens
        metavar="URL",
    )
    webhook_secret_file: str | None = _opt(
        None,
        "file holding the secret webhook bodies are signed with (HMAC-SHA256)",
        {ALERTS},
        metavar="FILE",
    )
    webhook_timeout: float = _opt(10.0, "webhook request timeout, seconds", {ALERTS}, "float")
    interval: float = _opt(15.0, "seconds between rule evaluations", {ALERTS}, "float")
    quality_interval: float = _opt(
        300.0,
        "seconds between data-quality evaluations (0: only when /quality is asked)",
        {DEMO, API},
        "float",
    )
    forecast_refresh: float = _opt(
        3600.0, "seconds between retrainings of the forecast", {DEMO, API}, "float"
    )
    # --- simulators
    devices: int = _opt(
        300, "number of simulated devices", {DEMO, SIM_FLEET, FLEET_GENERATE}, "int"
    )
    seed: int = _opt(1, "random seed", {DEMO, SIM_FLEET, SIM_MODULE, FLEET_GENERATE}, "int")
    gateways: int = _opt(1, "number of gateways devices are assigned to", {FLEET_GENERATE}, "int")
    output: str | None = _opt(
        None,
        "output file (default: standard output; credentials: required) or folder (deploy)",
        {FLEET_GENERATE, FLEET_CREDENTIALS, DEPLOY_BROKER, DEPLOY_INFLUX},
        metavar="PATH",
    )
    scheme: str = _opt(
        "oscore", "device security scheme", {FLEET_CREDENTIALS}, choices=("oscore", "dtls-psk")
    )
    rotate: tuple[str, ...] = _opt(
        (),
        "a device whose secret is replaced, keeping its id (repeatable; the others are kept)",
        {FLEET_CREDENTIALS},
        "list",
        metavar="DEVICE",
    )
    registry_out: str | None = _opt(
        None,
        "also write the module's registry rows (CSV) to this file",
        {SIM_MODULE},
        metavar="FILE",
    )
    # --- provisioning
    admin_username: str = _opt("admin", "InfluxDB admin user", {DEPLOY_INFLUX}, metavar="NAME")
    admin_password_file: str | None = _opt(
        None, "file holding the InfluxDB admin password", {DEPLOY_INFLUX}, metavar="FILE"
    )
    role: str = _opt(
        "viewer", "role of the new API key", {API_KEYS_ADD}, choices=("operator", "viewer")
    )
    file: str | None = _opt(
        None,
        "TOML file of hashed API keys the new key is appended to",
        {API_KEYS_ADD},
        metavar="FILE",
    )
    name: str | None = _opt(
        None, "name of the new API key (default: key-<time>)", {API_KEYS_ADD}, metavar="NAME"
    )
    time_scale: float = _opt(
        60.0, "simulated seconds per wall-clock second", {DEMO, SIM_FLEET}, "float"
    )
    duration: float = _opt(
        0.0, "stop after this many seconds (0: run until stopped)", {DEMO, SIM_FLEET}, "float"
    )
    faults: tuple[str, ...] = _opt(
        (),
        "faults to inject, NAME[=RATE],...",
        {SIM_FLEET, SIM_MODULE},
        "list",
        metavar="NAME[=RATE],...",
    )
    sensor_faults: tuple[str, ...] = _opt(
        (),
        "sensor faults with known truth: stuck, spike, drift, covered_inlet, reversal [=RATE]",
        {DEMO, SIM_FLEET},
        "list",
        metavar="NAME[=RATE],...",
    )
    dialect: str = _opt(
        "bc95",
        "NB-IoT module dialect",
        {SIM_MODULE, EDGE_PROBE},
        choices=SERIAL_DIALECTS,
    )
    serial_device: str | None = _opt(
        None, "serial device of the module", {EDGE_PROBE}, metavar="DEV"
    )
    backfill_hours: float = _opt(24.0, "hours of history generated at start", {DEMO}, "float")
    senml_format: str = _opt(
        "mixed",
        "SenML encoding of simulated uplinks (mixed: each device picks JSON or CBOR)",
        {DEMO, SIM_FLEET},
        choices=("json", "cbor", "mixed"),
    )
    report_interval: float = _opt(
        0.0,
        "simulated seconds between a device's uplinks (0: each kind's catalog interval)",
        {DEMO, SIM_FLEET},
        "float",
    )

    def secret_free(self) -> dict[str, object]:
        """The settings as a dict with secrets masked, for logs."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata["secret"] and value:
                value = "***"
            elif isinstance(value, str) and "://" in value:
                value = mask_url(value)
            out[f.name] = value
        return out


@dataclass(frozen=True, slots=True)
class Option:
    """One row of the options table, derived from a :class:`Settings` field."""

    name: str
    help: str
    commands: frozenset[str]
    kind: str
    default: object
    choices: tuple[str, ...] | None
    secret: bool
    metavar: str | None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


OPTIONS: tuple[Option, ...] = tuple(
    Option(
        f.name,
        f.metadata["help"],
        f.metadata["commands"],
        f.metadata["kind"],
        f.default,
        f.metadata["choices"],
        f.metadata["secret"],
        f.metadata["metavar"],
    )
    for f in dataclasses.fields(Settings)
)
OPTIONS_BY_NAME: Mapping[str, Option] = {o.name: o for o in OPTIONS}


def options_for(command: str) -> tuple[Option, ...]:
    return tuple(o for o in OPTIONS if command in o.commands)


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


def read_secret_file(path: str, flag: str) -> str:
    """The secret held in ``path`` (one line; the trailing newline is not part of it)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{flag} {path}: not UTF-8 text") from exc
    secret = text.rstrip("\r\n")
    if not secret:
        raise ConfigError(f"{flag} {path}: the file is empty")
    return secret


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


# --------------------------------------------------------------------------- validation

DEFAULT_API_BIND = "127.0.0.1:8000"
_HOSTPORT_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")
ROLES = ("operator", "viewer")


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) -> (host, port); raises :class:`ConfigError`."""
    m = _HOSTPORT_RE.match(text.strip())
    if not m or not 0 <= int(m.group(2)) <= 65535:
        raise ConfigError(f"{what} must be HOST:PORT, not {text!r}")
    return m.group(1).strip("[]"), int(m.group(2))


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    """Where the MQTT broker is and how to prove who we are (see :mod:`citysense.mqttsecurity`)."""

    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None = dataclasses.field(default=None, repr=False)
    ca: str | None = None  #: CA file verifying the broker (None: the system's CAs)
    cert: str | None = None  #: client certificate file
    key: str | None = None  #: its private key file


def parse_mqtt_url(url: str) -> BrokerUrl:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(
            f"--mqtt must be mqtt://[user:pass@]host[:port] or mqtts://..., not {mask_url(url)!r}"
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"--mqtt has a bad port: {mask_url(url)!r}") from exc
    tls = parts.scheme == "mqtts"
    return BrokerUrl(
        parts.hostname,
        port or (8883 if tls else 1883),
        tls,
        None if parts.username is None else unquote(parts.username),
        None if parts.password is None else unquote(parts.password),
    )


def broker_url(settings: Settings, default: str) -> BrokerUrl:
    """The broker of ``--mqtt`` (or ``default``) with the credentials and TLS files of the
    other ``--mqtt-*`` options, which take precedence over the URL's userinfo."""
    url = parse_mqtt_url(settings.mqtt or default)
    username = settings.mqtt_username if settings.mqtt_username is not None else url.username
    password = settings.mqtt_password if settings.mqtt_password is not None else url.password
    return dataclasses.replace(
        url,
        username=username,
        password=password,
        ca=settings.mqtt_ca,
        cert=settings.mqtt_cert,
        key=settings.mqtt_key,
    )


def mask_url(url: str) -> str:
    """The URL with any password replaced, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def parse_api_keys(items: tuple[str, ...]) -> dict[str, str]:
    """``KEY:ROLE`` items -> {key: role}; raises :class:`ConfigError`."""
    keys: dict[str, str] = {}
    for item in items:
        key, sep, role = item.rpartition(":")
        if not sep or not key or role not in ROLES:
            raise ConfigError(
                f"--api-keys entries must be KEY:ROLE with ROLE in {', '.join(ROLES)}"
            )
        if len(key) < 8:
            raise ConfigError("--api-keys: each key needs at least 8 characters")
        keys[key] = role
    return keys


def parse_serial(item: str) -> tuple[str, str]:
    """``/dev/ttyUSB0:bc95`` -> (device, dialect)."""
    dev, sep, dialect = item.rpartition(":")
    if not sep or not dev or dialect not in SERIAL_DIALECTS:
        raise ConfigError(
            f"--serial must be DEV:DIALECT with DIALECT in {', '.join(SERIAL_DIALECTS)}, "
            f"not {item!r}"
        )
    return dev, dialect


_RETENTION_RE = re.compile(r"(\d{1,7})([hdw])")
_RETENTION_UNIT_MS = {"h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}


def parse_retention(text: str, flag: str) -> int:
    """``90d`` -> milliseconds (units h, d, w; at least one hour)."""
    m = _RETENTION_RE.fullmatch(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ConfigError(f"{flag} must be a duration like 90d, 52w or 720h, not {text!r}")
    return int(m.group(1)) * _RETENTION_UNIT_MS[m.group(2)]


def validate(s: Settings, command: str) -> None:
    """Cross-check settings for ``command``; raises :class:`ConfigError`."""
    if s.mqtt is not None:
        parse_mqtt_url(s.mqtt)
    if s.influx is not None:
        parts = urlsplit(s.influx)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"--influx must be http(s)://[user:pass@]host:port, not {mask_url(s.influx)!r}"
            )
    if not GATEWAY_ID_RE.fullmatch(s.gateway):
        raise ConfigError(f"--gateway {s.gateway!r} must match [a-z0-9][a-z0-9-]{{0,47}}")
    if command != DEPLOY_BROKER:  # there --bind is a host alone
        parse_hostport(s.bind, "--bind")
    if command == DEPLOY_BROKER and s.port is not None and not 0 < s.port < 65536:
        raise ConfigError(f"--port must be 1-65535, not {s.port}")
    for name in ("mqtt_ca", "mqtt_cert", "mqtt_key", "influx_ca"):
        path = getattr(s, name)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{OPTIONS_BY_NAME[name].flag} {path}: no such file")
    if (s.mqtt_cert is None) != (s.mqtt_key is None):
        raise ConfigError("--mqtt-cert and --mqtt-key go together")
    parse_hostport(s.coap, "--coap")
    if s.metrics_bind not in (None, "off"):
        parse_hostport(s.metrics_bind, "--metrics-bind")
    parse_api_keys(s.api_keys)
    for item in s.serial:
        parse_serial(item)
    positive = {
        "max_uplink_bytes": s.max_uplink_bytes,
        "max_age": s.max_age,
        "outbox_quota_mb": s.outbox_quota_mb,
        "batch_max_readings": s.batch_max_readings,
        "resend_interval": s.resend_interval,
        "max_inflight_batches": s.max_inflight_batches,
        "receive_maximum": s.receive_maximum,
        "write_batch_points": s.write_batch_points,
        "point_limit": s.point_limit,
        "webhook_timeout": s.webhook_timeout,
        "interval": s.interval,
        "rate_limit": s.rate_limit,
        "influx_timeout": s.influx_timeout,
        "time_scale": s.time_scale,
        "gateways": s.gateways,
        "limit": s.limit,
        "device_burst": s.device_burst,
        "dtls_sessions": s.dtls_sessions,
        "dead_letter_max_mb": s.dead_letter_max_mb,
        "dead_letter_days": s.dead_letter_days,
        "unhealthy_after": s.unhealthy_after,
    }
    for name, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{OPTIONS_BY_NAME[name].flag} must be positive, not {value}")
    non_negative = {
        "batch_max_delay": s.batch_max_delay,
        "write_max_delay": s.write_max_delay,
        "duration": s.duration,
        "backfill_hours": s.backfill_hours,
        "devices": s.devices,
        "retry_max_delay": s.retry_max_delay,
        "device_rate": s.device_rate,
        "source_rate": s.source_rate,
    }
    for name, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{OPTIONS_BY_NAME[name].flag} must not be negative, not {value}")
    raw_ms = parse_retention(s.retention_raw, "--retention-raw")
    if parse_retention(s.retention_rollup, "--retention-rollup") < raw_ms:
        raise ConfigError("--retention-rollup must be at least --retention-raw")
    try:
        zoneinfo.ZoneInfo(s.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"--timezone {s.timezone!r} is not a known IANA time zone") from None
    if s.receive_maximum > 65535:
        raise ConfigError("--receive-maximum must be at most 65535 (MQTT's limit)")
    if (
        s.registry is not None
        and command in (EDGE, API, DEMO, ALERTS)
        and not Path(s.registry).is_file()
    ):
        raise ConfigError(f"--registry {s.registry}: no such file")
    if s.coaps is not None:
        parse_hostport(s.coaps, "--coaps")
    device_keys = s.device_keys
    if device_keys is not None and command in (EDGE, SIM_FLEET) and not Path(device_keys).is_file():
        raise ConfigError(f"--device-keys {s.device_keys}: no such file")
    if command == FLEET_CREDENTIALS and (s.registry is None or s.output in (None, "-")):
        raise ConfigError("fleet credentials needs --registry FILE and --output FILE")
    if command == ALERTS and not s.rules:
        raise ConfigError("alerts needs --rules FILE")
    if s.alerts is not None:
        parts = urlsplit(s.alerts)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"--alerts must be an http(s) URL, not {mask_url(s.alerts)!r}")
    if command == EDGE_PROBE and not s.serial_device:
        raise ConfigError("edge probe needs --serial-device DEV (or --serial DEV)")
