"""citysense: NB-IoT city sensor readings from the street to the people who run the city.

This package is the shared vocabulary -- reading and batch model (:mod:`citysense.model`),
metric catalog (:mod:`citysense.catalog`), validation, SenML and envelope codecs, device
registry, configuration and the error root -- plus the ``citysense`` command
(:mod:`citysense.cli`), the composition root and the only module that imports services.
Everything here but the CLI is pure: no I/O beyond reading a file it is asked to read.
"""

__version__ = "0.1.0"
