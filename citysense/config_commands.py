"""The subcommands, and which of them take which group of options."""

from __future__ import annotations

ENV_PREFIX = "CITYSENSE_"

# Subcommand names, as typed on the command line.
DEMO = "demo"
EDGE = "edge"
EDGE_PROBE = "edge probe"
INGEST = "ingest"
DEAD_LETTERS = "ingest dead-letters"
API = "api"
SIM_FLEET = "simulate fleet"
SIM_MODULE = "simulate module"
FLEET_GENERATE = "fleet generate"
ALERTS = "alerts"
FLEET_CREDENTIALS = "fleet credentials"
DEPLOY_BROKER = "deploy broker"
DEPLOY_INFLUX = "deploy influx"
API_KEYS_ADD = "api keys add"
COMMANDS: tuple[str, ...] = (
    DEMO,
    EDGE,
    EDGE_PROBE,
    INGEST,
    DEAD_LETTERS,
    API,
    ALERTS,
    SIM_FLEET,
    SIM_MODULE,
    FLEET_GENERATE,
    FLEET_CREDENTIALS,
    DEPLOY_BROKER,
    DEPLOY_INFLUX,
    API_KEYS_ADD,
)
_SERVICES = frozenset({DEMO, EDGE, INGEST, API, ALERTS})
_ALL = frozenset(COMMANDS)
_STORAGE = frozenset({DEMO, INGEST, DEAD_LETTERS, API, ALERTS})
#: ``--bind`` of ``citysense alerts`` when left at the API's default.
ALERTS_DEFAULT_BIND = "127.0.0.1:8001"
_MQTT_CLIENTS = frozenset({DEMO, EDGE, INGEST, ALERTS})
