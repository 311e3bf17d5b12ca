"""The embedded MQTT broker: citysense's default MQTT server for the demo and the tests.

A component of its own (not part of the shared vocabulary in :mod:`citysense`): a sans-I/O
codec, the session core and a thin asyncio server, all in :mod:`.broker`.
"""

from mqtt_broker.broker import Broker, BrokerConfig, BrokerCore

__all__ = ["Broker", "BrokerConfig", "BrokerCore"]
