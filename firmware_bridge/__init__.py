"""firmware_bridge: NB-IoT module drivers.

A sans-I/O AT protocol core (commands, final results, URCs, per-module dialect tables) and a
thin pyserial transport. Imports only :mod:`citysense`.
"""
