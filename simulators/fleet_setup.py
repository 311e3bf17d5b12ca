"""From settings to a fleet's inputs: where it sends, which devices, which of them secure."""

from __future__ import annotations

import logging
from pathlib import Path

from citysense.config import Settings, parse_hostport
from citysense.credentials import read_device_keys
from citysense.errors import ConfigError, InputError
from citysense.registry import Device, load_registry_option
from simulators.city import generate_fleet
from simulators.secure import SecureDevices, device_state_folder

log = logging.getLogger("simulators.fleet")


def coap_target(settings: Settings) -> tuple[str, int]:
    """Where the fleet sends: ``--coap``, with a wildcard host meaning this machine."""
    host, port = parse_hostport(settings.coap, "--coap")
    if host in ("0.0.0.0", "", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, port


def load_fleet_registry(settings: Settings) -> list[Device]:
    """The fleet's devices: ``--registry`` (those of ``--gateway`` when it names any), or a
    generated fleet of ``--devices`` on ``--gateway``."""
    if settings.registry is None:
        return generate_fleet(settings.devices, settings.seed, [settings.gateway])
    registry = load_registry_option(settings.registry)
    mine = registry.of_gateway(settings.gateway)
    chosen = mine if len(mine) else registry
    if not len(mine):
        log.info(
            "no device of the registry is on gateway %s: simulating all %d devices",
            settings.gateway,
            len(registry),
        )
    return list(chosen.values())


def secure_devices(settings: Settings) -> SecureDevices | None:
    """The devices of ``--device-keys`` that send with OSCORE or DTLS, or ``None``."""
    if settings.device_keys is None:
        return None
    try:
        keys = read_device_keys(settings.device_keys)
    except InputError as exc:
        raise ConfigError(f"--device-keys {settings.device_keys}: {exc}") from exc
    coap = coap_target(settings)
    if settings.coaps is not None:
        coaps = parse_hostport(settings.coaps, "--coaps")
    else:
        coaps = (coap[0], 5684)
    return SecureDevices(
        {k.device: k for k in keys},
        coap,
        coaps,
        device_state_folder(Path(settings.device_keys)),
    )
