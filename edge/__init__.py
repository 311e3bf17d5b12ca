"""edge: the gateway service.

CoAP site (aiocoap), serial sources, validation, durable outbox, MQTT uplink, downlink queue.
Invariant: a device is answered 2.04 only after its readings are committed to the outbox, and
a batch leaves the outbox only when an ingestor confirms it on ``.../stored``.
Imports :mod:`citysense` and :mod:`firmware_bridge`.
"""
