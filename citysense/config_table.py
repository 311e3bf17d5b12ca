"""The options table: :class:`Settings`, one field per option (see :mod:`citysense.config`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from citysense.config_commands import (
    _ALL,
    _MQTT_CLIENTS,
    _SERVICES,
    _STORAGE,
    ALERTS,
    ALERTS_DEFAULT_BIND,
    API,
    API_KEYS_ADD,
    DEAD_LETTERS,
    DEMO,
    DEPLOY_BROKER,
    DEPLOY_INFLUX,
    EDGE,
    EDGE_PROBE,
    FLEET_CREDENTIALS,
    FLEET_GENERATE,
    INGEST,
    SIM_FLEET,
    SIM_MODULE,
)
from citysense.config_parse import mask_url
from citysense.model import SERIAL_DIALECTS


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
        repr=not secret,  # a secret never shows in a repr (a traceback, a debug line)
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
