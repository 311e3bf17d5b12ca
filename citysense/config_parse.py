"""Parsing of option values: host:port, broker URLs, API keys, serial ports, retention,
secret files; and masking of passwords in URLs for logs."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from citysense.errors import ConfigError
from citysense.model import SERIAL_DIALECTS

if TYPE_CHECKING:
    from citysense.config_table import Settings

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
