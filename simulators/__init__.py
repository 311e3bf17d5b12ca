"""simulators: stand-ins for hardware.

Simulated NB-IoT modules on pseudo-terminals, simulated CoAP sensor fleets and city models
(numpy), scenarios and fault injection. Imports only :mod:`citysense` -- never the code it
stands in front of, so that it tests that code instead of mirroring it.
"""
