"""timeseries: storage.

Schema mapping (readings to points), writers and queries for InfluxDB (1.x HTTP API, 2.x API
via influxdb-client) and the embedded SQLite store. Writes are idempotent: a reading written
twice is one point. Imports only :mod:`citysense`.
"""
