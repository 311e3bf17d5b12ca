"""``citysense api``: the operator API and dashboard as a foreground process.

SIGTERM and SIGINT cancel the server task, which finishes in-flight requests and exits 0.
A :class:`~citysense.errors.ConfigError` propagates to the CLI (exit 2).
"""

from __future__ import annotations

import logging

from citysense.config import Settings
from citysense.serving import run_until_signalled
from dashboard_api.app import create_app
from dashboard_api.service import serve

log = logging.getLogger(__name__)


def run(settings: Settings) -> int:
    app = create_app(settings)  # configuration errors surface before anything starts
    return run_until_signalled(
        lambda ready: serve(settings, ready, app=app), log, "operator API stopped", "citysense api"
    )
