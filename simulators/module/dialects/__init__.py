"""Per-family behaviour of the simulated modules: one :class:`DialectSpec` each.

A spec holds what differs between families -- identity prefixes, boot banner, sleep URCs, how
an arriving datagram is announced -- and the handler table (command name -> handler) built
from the shared handlers of :mod:`.common` and the family's own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simulators.module.core import ModuleCore
    from simulators.module.model import Socket

#: ``handler(core, op, args)``: op is ``""``, ``"="``, ``"?"`` or ``"=?"``
Handler = Callable[["ModuleCore", str, str], None]


@dataclass(frozen=True, slots=True)
class DialectSpec:
    name: str
    tac: str  #: IMEI type allocation code
    earfcn: int
    band: int
    colon_space: bool  #: ``+NAME: args`` (``False``: ``+NAME:args``)
    banner: Callable[[str], list[str]]  #: boot banner lines for a reset cause
    reboot_lines: tuple[str, ...]  #: written before the reset (then a stray ``H?``)
    sleep_line: Callable[[bool], str]  #: the PSM URC (asleep?)
    announce: Callable[[ModuleCore, Socket, bytes, str], None]  #: a datagram arrives
    error_while_booting: bool  #: answers ``ERROR`` before its banner (else silent)
    handlers: Mapping[str, Handler]


def spec_of(name: str) -> DialectSpec:
    from simulators.module.dialects import bc66, bc95, sim7020

    specs = {"bc95": bc95.SPEC, "sim7020": sim7020.SPEC, "bc66": bc66.SPEC}
    return specs[name]
