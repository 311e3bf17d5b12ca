"""ingest: the cloud ingestor.

MQTT consumer on a shared subscription that acknowledges a message only after its readings are
in storage (or dead-lettered with a reason), batching, dead letters, ``.../stored``
confirmations. Imports :mod:`citysense` and :mod:`timeseries`.
"""
