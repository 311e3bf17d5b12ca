"""The provisioning subcommands: ``deploy broker``, ``deploy influx``, ``api keys add``.

Each takes :class:`~citysense.config.Settings` and returns an exit code; a
:class:`~citysense.errors.ConfigError` is printed as one line with exit code 2.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
from pathlib import Path

from citysense.apikeys import key_entry, load_keys_file, new_key
from citysense.config import DEFAULT_API_BIND, Settings, read_secret_file
from citysense.errors import ConfigError, InputError
from citysense.privatefiles import PRIVATE_FILE
from citysense.registry import load_registry
from provision.broker import write_broker
from provision.influx import deploy_influx as _deploy_influx

log = logging.getLogger(__name__)
DEFAULT_BROKER_PORT = 8883


def deploy_broker(settings: Settings) -> int:
    if not settings.registry:
        raise ConfigError("deploy broker needs --registry FILE")
    if not settings.output:
        raise ConfigError("deploy broker needs --output DIR")
    try:
        registry = load_registry(settings.registry)
    except InputError as exc:
        raise ConfigError(f"--registry {settings.registry}: {exc}") from exc
    # --bind is shared with the API (HOST:PORT, default 127.0.0.1:8000); here it is a host
    bind = "0.0.0.0" if settings.bind == DEFAULT_API_BIND else settings.bind
    gateways = sorted({device.gateway for device in registry.values()})
    files = write_broker(
        gateways, Path(settings.output), bind, settings.port or DEFAULT_BROKER_PORT
    )
    print(
        f"wrote a broker for {len(gateways)} gateways to {files.folder}: "
        f"mosquitto -c {files.folder.resolve() / 'mosquitto.conf'} "
        f"(password clients on {bind}:{files.port}, certificate clients on {files.port + 1})"
    )
    return 0


def deploy_influx(settings: Settings) -> int:
    if not settings.influx:
        raise ConfigError("deploy influx needs --influx URL")
    if not settings.admin_password_file:
        raise ConfigError("deploy influx needs --admin-password-file FILE")
    if not settings.output:
        raise ConfigError("deploy influx needs --output DIR")
    password = read_secret_file(settings.admin_password_file, "--admin-password-file")
    written = _deploy_influx(
        settings.influx,
        settings.admin_username,
        password,
        settings.influx_db,
        Path(settings.output),
        ca=settings.influx_ca,
    )
    for user, path in written.items():
        print(f"{user}: password in {path}")
    return 0


def api_keys_add(settings: Settings) -> int:
    if not settings.file:
        raise ConfigError("api keys add needs --file FILE")
    path = Path(settings.file)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    name = settings.name or f"key-{now:%Y%m%dT%H%M%S}"
    if path.exists() and any(k.name == name for k in load_keys_file(str(path))):
        raise ConfigError(f"--file {path}: a key named {name!r} exists already")
    key = new_key()
    entry = key_entry(name, settings.role, key, now.isoformat().replace("+00:00", "Z"))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        os.write(fd, entry.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    print(key)
    print(
        f"key {name!r} ({settings.role}) added to {path}; this is the only time it is shown",
        file=sys.stderr,
    )
    return 0
