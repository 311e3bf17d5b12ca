"""Simulated NB-IoT modules on pseudo-terminals: BC95-G, SIM7020 or BC66.

* :mod:`.core` -- the sans-I/O module: state, timers, faults, output with delivery accounting;
* :mod:`.dialects` -- one handler table and spec per family (:mod:`.dialects.bc95`,
  :mod:`.dialects.sim7020`, :mod:`.dialects.bc66`, shared handlers in :mod:`.dialects.common`);
* :mod:`.pty` -- :class:`SimulatedModule`, the core on a pty in a thread of its own;
* :mod:`.command` -- ``citysense simulate module``.

Faults (``garble``, ``drop``, ``delay``, ``urc``, ``reboot``, ``deregister``, ``junk``,
``vanish``, ``busy``) are switched on by name with a rate, and drawn from a seeded generator.
Imports only :mod:`citysense` and the standard library, never the driver it stands in front of.
"""

from simulators.module.command import registry_rows, run_module_command
from simulators.module.core import ModuleCore, sensor_devices
from simulators.module.model import FAULT_DEFAULTS, ModuleTimings, luhn_digit, parse_faults
from simulators.module.pty import DIALECTS, SimulatedModule

__all__ = [
    "DIALECTS",
    "FAULT_DEFAULTS",
    "ModuleCore",
    "ModuleTimings",
    "SimulatedModule",
    "luhn_digit",
    "parse_faults",
    "registry_rows",
    "run_module_command",
    "sensor_devices",
]
