"""``citysense alerts`` as a foreground process: SIGTERM/SIGINT stop it (exit 0); a bad rules
file or option is a :class:`~citysense.errors.ConfigError` (exit 2, ``file:line: reason``)."""

from __future__ import annotations

import logging

from alerts.service import AlertService
from citysense.config import Settings
from citysense.serving import run_until_signalled

log = logging.getLogger(__name__)


def run(settings: Settings) -> int:
    service = AlertService(settings)  # configuration errors surface before anything starts
    return run_until_signalled(service.run, log, "alerts stopped")
