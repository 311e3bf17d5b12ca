"""``citysense fleet credentials``: one key per registered device, written 0600.

Keys already in ``--output`` (same scheme) are kept, so adding devices to the registry and
running the command again provisions only the new ones; ``--rotate DEVICE`` gives a device a
new secret under the same id. The secrets are never printed.
"""

from __future__ import annotations

from pathlib import Path

from citysense.config import Settings
from citysense.credentials import (
    generate_device_keys,
    read_device_keys,
    write_device_keys,
)
from citysense.errors import ConfigError, InputError
from citysense.registry import load_registry


def run(settings: Settings) -> int:
    assert settings.registry is not None and settings.output is not None
    try:
        registry = load_registry(settings.registry)
    except InputError as exc:
        raise ConfigError(f"--registry {settings.registry}: {exc}") from exc
    out = Path(settings.output)
    existing = {}
    if out.exists():
        try:
            existing = {k.device: k for k in read_device_keys(out)}
        except InputError as exc:
            raise ConfigError(f"--output {out}: {exc}") from exc
    unknown = sorted(set(settings.rotate) - set(registry))
    if unknown:
        raise ConfigError(f"--rotate: {unknown[0]} is not in the registry")
    keys = generate_device_keys(list(registry), settings.scheme, existing, settings.rotate)
    try:
        write_device_keys(out, keys)
    except OSError as exc:
        raise ConfigError(f"--output {out}: {exc.strerror or exc}") from exc
    kept = sum(1 for k in keys if k.device in existing and k.device not in settings.rotate)
    print(
        f"{len(keys)} {settings.scheme} keys written to {out} (0600): {kept} kept, "
        f"{len(keys) - kept} new or rotated"
    )
    return 0
