"""The ``citysense`` command: the composition root.

This package alone imports the services (``edge``, ``ingest``, ``dashboard_api``,
``simulators``); each subcommand names the function that runs it, ``run(settings) -> int``,
imported only when that subcommand runs. Options come from :mod:`citysense.config`.

Exit codes: 0 success, 2 bad usage or configuration (one-line reason), 1 other failure.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from collections.abc import Callable, Sequence

from citysense import __version__, logs
from citysense.config import (
    COMMANDS,
    EDGE_PROBE,
    Settings,
    load_settings,
    options_for,
    secrets_on_command_line,
)
from citysense.errors import CitysenseError, ConfigError

log = logging.getLogger("citysense")

#: subcommand -> "module:function"; the function takes Settings and returns an exit code.
#: Every command, in the order of ``--help`` (each one resolved by :func:`resolve_entry`).
ENTRY_POINTS: tuple[str, ...] = (
    "demo",
    "edge",
    "edge probe",
    "ingest",
    "ingest dead-letters",
    "api",
    "alerts",
    "simulate fleet",
    "simulate module",
    "fleet generate",
    "fleet credentials",
    "deploy broker",
    "deploy influx",
    "api keys add",
)

DESCRIPTIONS: dict[str, str] = {
    "demo": "the whole city on one machine with embedded defaults",
    "edge": "a gateway: CoAP server, serial modules, outbox, MQTT uplink",
    "edge probe": "identify an attached NB-IoT module and print its radio figures",
    "ingest": "an ingestor: MQTT (shared subscription) -> storage",
    "ingest dead-letters": "list rejected input with its reason and raw payload",
    "api": "the operator API and dashboard",
    "alerts": "alarm rules, alarm lifecycle and durable notifications",
    "simulate fleet": "a simulated sensor fleet sending CoAP uplinks",
    "simulate module": "a simulated NB-IoT module on a pseudo-terminal",
    "fleet generate": "write a device registry (CSV) for a simulated city",
    "fleet credentials": "write one key per registered device (OSCORE or DTLS-PSK), 0600",
    "deploy broker": "write a Mosquitto configuration, users, ACL and certificates for the fleet",
    "deploy influx": "create the InfluxDB database and its writer and reader users",
    "api keys add": "create an API key: print it once, append only its hash to a file",
}


#: The extra that carries each subcommand's dependencies (``pip install 'citysense[EXTRA]'``).
EXTRA_OF: dict[str, str] = {
    "demo": "all",
    "edge": "edge",
    "edge probe": "edge",
    "ingest": "ingest",
    "ingest dead-letters": "ingest",
    "api": "api",
    "alerts": "alerts",
    "simulate fleet": "sim",
    "simulate module": "sim",
    "fleet generate": "sim",
    "fleet credentials": "provision",
    "deploy broker": "provision",
    "deploy influx": "provision",
    "api keys add": "provision",
}

#: Top-level modules each extra provides (import names, not distribution names).
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "edge": ("paho", "aiocoap", "serial"),
    "ingest": ("paho", "httpx", "influxdb_client", "orjson"),
    "api": ("fastapi", "uvicorn", "httpx", "influxdb_client", "numpy", "orjson"),
    "alerts": ("fastapi", "uvicorn", "httpx", "influxdb_client", "numpy", "paho"),
    "sim": ("numpy", "aiocoap", "cryptography"),
    "provision": ("cryptography", "httpx"),
}
EXTRA_MODULES["all"] = tuple(sorted({m for mods in EXTRA_MODULES.values() for m in mods}))


def missing_extra(command: str) -> str | None:
    """A one-line reason when ``command``'s extra is not installed, else None."""
    extra = EXTRA_OF.get(command)
    if extra is None:
        return None
    missing = [m for m in EXTRA_MODULES[extra] if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return _install_hint(command, extra, missing)


def _install_hint(command: str, extra: str, missing: Sequence[str]) -> str:
    return (
        f"'citysense {command}' needs the [{extra}] extra (missing: {', '.join(missing)}); "
        f"install it with: pip install 'citysense[{extra}]'"
    )


def _add_options(parser: argparse.ArgumentParser, command: str) -> None:
    for option in options_for(command):
        kwargs: dict[str, object] = {
            "dest": option.name,
            "default": None,
            "help": f"{option.help} [env {option.env}; default {option.default!r}]",
        }
        if option.metavar:
            kwargs["metavar"] = option.metavar
        if option.choices:
            kwargs["choices"] = option.choices
        if option.kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif option.kind == "list":
            kwargs["action"] = "append"
        parser.add_argument(option.flag, **kwargs)  # type: ignore[arg-type]
    if command == EDGE_PROBE:
        parser.add_argument(
            "--serial",
            dest="serial_device",
            default=None,
            metavar="DEV",
            help="serial device of the module (alias of --serial-device)",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="citysense",
        description="citysense: NB-IoT city sensor readings from the street to the operators.",
    )
    parser.add_argument("--version", action="version", version=f"citysense {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for command in COMMANDS:
        words = command.split()
        if len(words) == 1 and command not in ("simulate", "fleet"):
            sub = subs.add_parser(
                command, help=DESCRIPTIONS[command], description=DESCRIPTIONS[command]
            )
            sub.set_defaults(_command=command)
            _add_options(sub, command)
            if command in ("edge", "ingest", "api"):
                groups[command] = sub.add_subparsers(dest="action", metavar="ACTION")
            continue
        *heads, tail = words
        for depth in range(len(heads)):
            head = " ".join(heads[: depth + 1])
            if head in groups:
                continue
            parent = subs if depth == 0 else groups[" ".join(heads[:depth])]
            top = parent.add_parser(heads[depth], help=f"{head} commands")
            top.set_defaults(_command=None, _group=top)
            groups[head] = top.add_subparsers(dest=f"action{depth}", metavar="ACTION")
        sub = groups[" ".join(heads)].add_parser(
            tail, help=DESCRIPTIONS[command], description=DESCRIPTIONS[command]
        )
        sub.set_defaults(_command=command)
        _add_options(sub, command)
    return parser


def resolve_entry(command: str) -> Callable[[Settings], int]:
    """The function that runs ``command``; :class:`ConfigError` naming the extra to install
    when the command's dependencies are missing."""
    reason = missing_extra(command)
    if reason is not None:
        raise ConfigError(reason)
    try:
        return _entry(command)
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        extra = EXTRA_OF.get(command)
        if extra is not None and top in EXTRA_MODULES["all"]:
            raise ConfigError(_install_hint(command, extra, [top])) from exc
        raise


def _entry(command: str) -> Callable[[Settings], int]:
    """The function that runs ``command`` (static imports, loaded when the command runs)."""
    match command:
        case "demo":
            from citysense.cli.demo import run as demo

            return demo
        case "edge":
            from edge.cli import run as edge

            return edge
        case "edge probe":
            from edge.cli import probe

            return probe
        case "ingest":
            from ingest.cli import run as ingest

            return ingest
        case "ingest dead-letters":
            from ingest.cli import dead_letters

            return dead_letters
        case "api":
            from dashboard_api.cli import run as api

            return api
        case "alerts":
            from alerts.cli import run as alerts

            return alerts
        case "simulate fleet":
            from simulators.cli import fleet

            return fleet
        case "simulate module":
            from simulators.cli import module

            return module
        case "fleet generate":
            from simulators.cli import generate

            return generate
        case "fleet credentials":
            from citysense.cli.credentials import run as credentials

            return credentials
        case "deploy broker":
            from provision.cli import deploy_broker

            return deploy_broker
        case "deploy influx":
            from provision.cli import deploy_influx

            return deploy_influx
        case "api keys add":
            from provision.cli import api_keys_add

            return api_keys_add
    raise ConfigError(f"unknown command {command!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = getattr(args, "_command", None)
    if command is None:
        group = getattr(args, "_group", parser)
        group.print_help(sys.stderr)
        return 2
    raw = {
        k: v
        for k, v in vars(args).items()
        if not k.startswith("_") and k != "command" and not k.startswith("action")
    }
    try:
        settings = load_settings(command, raw)
        logs.configure(settings.log_level, settings.log_format)
        for flag in secrets_on_command_line(raw):
            log.warning(
                "%s was given on the command line, where other users of this machine can read "
                "it; use its -file twin or the environment instead",
                flag,
            )
        run = resolve_entry(command)
        return run(settings)
    except ConfigError as exc:
        print(f"citysense: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    except CitysenseError as exc:
        print(f"citysense: {exc}", file=sys.stderr)
        return 1
    finally:
        logs.flush()


def console() -> None:
    """The console-script entry point."""
    sys.exit(main())
