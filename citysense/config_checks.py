"""Cross-checks of the settings of one subcommand (:func:`validate`)."""

from __future__ import annotations

import zoneinfo
from pathlib import Path
from urllib.parse import urlsplit

from citysense.config_commands import (
    ALERTS,
    API,
    DEMO,
    DEPLOY_BROKER,
    EDGE,
    EDGE_PROBE,
    FLEET_CREDENTIALS,
    SIM_FLEET,
)
from citysense.config_options import OPTIONS_BY_NAME
from citysense.config_parse import (
    mask_url,
    parse_api_keys,
    parse_hostport,
    parse_mqtt_url,
    parse_retention,
    parse_serial,
)
from citysense.config_table import Settings
from citysense.errors import ConfigError
from citysense.model import GATEWAY_ID_RE

_POSITIVE = (
    "max_uplink_bytes",
    "max_age",
    "outbox_quota_mb",
    "batch_max_readings",
    "resend_interval",
    "max_inflight_batches",
    "receive_maximum",
    "write_batch_points",
    "point_limit",
    "webhook_timeout",
    "interval",
    "rate_limit",
    "influx_timeout",
    "time_scale",
    "gateways",
    "limit",
    "device_burst",
    "dtls_sessions",
    "dead_letter_max_mb",
    "dead_letter_days",
    "unhealthy_after",
)
_NON_NEGATIVE = (
    "batch_max_delay",
    "write_max_delay",
    "duration",
    "backfill_hours",
    "devices",
    "retry_max_delay",
    "device_rate",
    "source_rate",
)


def validate(s: Settings, command: str) -> None:
    """Cross-check settings for ``command``; raises :class:`ConfigError`."""
    _check_endpoints(s, command)
    _check_numbers(s)
    _check_files_and_zone(s, command)
    _check_command_needs(s, command)


def _check_endpoints(s: Settings, command: str) -> None:
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


def _check_numbers(s: Settings) -> None:
    for name in _POSITIVE:
        value = getattr(s, name)
        if value <= 0:
            raise ConfigError(f"{OPTIONS_BY_NAME[name].flag} must be positive, not {value}")
    for name in _NON_NEGATIVE:
        value = getattr(s, name)
        if value < 0:
            raise ConfigError(f"{OPTIONS_BY_NAME[name].flag} must not be negative, not {value}")
    raw_ms = parse_retention(s.retention_raw, "--retention-raw")
    if parse_retention(s.retention_rollup, "--retention-rollup") < raw_ms:
        raise ConfigError("--retention-rollup must be at least --retention-raw")


def _check_files_and_zone(s: Settings, command: str) -> None:
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


def _check_command_needs(s: Settings, command: str) -> None:
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
