"""simulators: stand-ins for hardware.

Simulated NB-IoT modules on pseudo-terminals, simulated CoAP sensor fleets and city models
(numpy), scenarios and fault injection. Imports only :mod:`citysense` -- never the code it
stands in front of, so that it tests that code instead of mirroring it.

``city`` (districts, sites, seeded registries), ``models`` (vectorised sensor models),
``backfill`` (history), ``coap`` and ``coap_client`` (a sans-I/O CoAP codec and a raw-UDP
client), ``fleet`` (the live CoAP fleet and its counters), ``faults``, ``cli`` (the
subcommands). Everything is seeded: the same seed gives the same city, series and faults.
"""
