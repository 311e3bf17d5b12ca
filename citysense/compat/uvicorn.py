"""uvicorn: a server that leaves signal handling to its caller.

``uvicorn.Server.serve`` installs its own SIGINT/SIGTERM handlers through the (undocumented)
``capture_signals`` context manager and re-raises the signal when it ends; the CLI and the
demo own the signals of the process (several services share one event loop). Overriding it
is the workaround. When a uvicorn version has no ``capture_signals`` (the internal is gone),
:class:`Server` is plain ``uvicorn.Server``, and :data:`SIGNALS_FENCED` tells.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator

import uvicorn

#: True when uvicorn has the internal this module overrides.
SIGNALS_FENCED: bool = callable(getattr(uvicorn.Server, "capture_signals", None))


class _CallerSignals(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # signals belong to the caller (the CLI or the demo)


Server: type[uvicorn.Server] = _CallerSignals if SIGNALS_FENCED else uvicorn.Server
