"""The options table as rows (:class:`Option`), derived from :class:`Settings`' fields."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from citysense.config_commands import ENV_PREFIX
from citysense.config_table import Settings


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
