"""The peers citysense is measured against, and the load that drives them.

Each peer is what a city would otherwise run between Mosquitto and InfluxDB: Node-RED with
node-red-contrib-influxdb (:mod:`bench.peers.nodered`), a naive per-message Python writer
(:mod:`bench.peers.naive`) and a simple batched Python writer (:mod:`bench.peers.batched`).
:mod:`bench.peers.run` drives each one -- and citysense's own ingestor -- with the same
bounded load from the same broker into the same influxd, and counts what arrived.
"""
