"""The embedded broker's public names in one place (the package's stable import path).

The parts live in :mod:`.constants`, :mod:`.codec`, :mod:`.packets`, :mod:`.topics`,
:mod:`.session`, :mod:`.router`, :mod:`.core` and :mod:`.server`.
"""

from mqtt_broker.core import BrokerCore
from mqtt_broker.server import Broker
from mqtt_broker.session import BrokerConfig

__all__ = ["Broker", "BrokerConfig", "BrokerCore"]
