"""Every workaround of a library's internals, one module per library.

Each module says which internals it uses, checks at import (start-up) that they are there,
and falls back to the library's public API when one is missing, so that an upgrade of the
library degrades performance at worst, never correctness. pyproject.toml bounds the versions
the workarounds were written and tested against.
"""
