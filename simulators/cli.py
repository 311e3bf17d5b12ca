"""Entry points of the simulator subcommands (``citysense fleet generate``, ``simulate ...``).

Each takes the built :class:`~citysense.config.Settings` and returns an exit code; bad
input is a :class:`~citysense.errors.ConfigError` (exit 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import sys
from pathlib import Path

from citysense.config import Settings
from citysense.errors import ConfigError
from citysense.registry import format_registry

log = logging.getLogger(__name__)


def generate(settings: Settings) -> int:
    """``citysense fleet generate``: write a seeded device registry (CSV)."""
    from simulators.city import generate_fleet

    if settings.devices > 1_000_000:
        raise ConfigError("--devices: at most 1,000,000 devices")
    devices = generate_fleet(settings.devices, settings.seed, settings.gateways)
    text = format_registry(devices)
    if settings.output in (None, "-"):
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        try:
            Path(settings.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--output {settings.output}: {exc.strerror or exc}") from exc
        print(
            f"wrote {len(devices)} devices on {settings.gateways} gateway(s) to {settings.output}",
            file=sys.stderr,
        )
    return 0


def fleet(settings: Settings) -> int:
    """``citysense simulate fleet``: run a simulated CoAP fleet until stopped or its duration."""
    from simulators.fleet import Counters, load_fleet_registry, run_fleet

    registry = load_fleet_registry(settings)
    counters = Counters()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await run_fleet(settings, registry, stop_event=stop, counters=counters, progress=True)

    asyncio.run(main())
    print(counters.summary(), file=sys.stderr)
    return 0


def module(settings: Settings) -> int:
    """``citysense simulate module``: a simulated NB-IoT module on a pseudo-terminal."""
    # imported by name: the module simulator is built separately and loaded only when used
    run_module_command = importlib.import_module("simulators.module").run_module_command
    return int(run_module_command(settings))
