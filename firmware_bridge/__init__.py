"""firmware_bridge: NB-IoT module drivers.

A sans-I/O AT protocol core (commands, final results, URCs, per-module dialect tables) and a
thin pyserial transport. Imports only :mod:`citysense`.

* :mod:`~firmware_bridge.at` -- bytes in, events out; one command in flight, each with its own
  deadline; URCs anywhere; garbage counted, never fatal;
* :mod:`~firmware_bridge.dialects` -- BC95-G/BC28, SIM7020 and BC66 as data;
* :mod:`~firmware_bridge.radio` -- radio figures in dBm/dB whatever the family; PSM/eDRX timers;
* :mod:`~firmware_bridge.transport` -- the ``ByteStream`` seam and its pyserial implementation;
* :mod:`~firmware_bridge.driver` -- ``ModuleDriver``, the module operations over a byte stream;
* :mod:`~firmware_bridge.source` -- ``SerialSource``, the API the gateway uses: datagrams and
  ``device_health`` radio reports, re-initialising after reboots, reconnecting with back-off.

Invariant: every datagram line the module emits intact is handed to the gateway exactly once.
"""
