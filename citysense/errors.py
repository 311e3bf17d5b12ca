"""The one error root of citysense, and its classification.

Every error that citysense raises derives from :class:`CitysenseError`. Errors that cross an
I/O boundary are classified once, where they are translated (``raise ... from exc``):

* :class:`RetryableError` -- back off and keep the data (network down, 5xx, 429, disk full);
* :class:`PermanentError` -- retrying cannot help; dead-letter the data with a reason.

Input errors (:class:`InputError` and its children) carry a short machine-readable ``reason``
that is counted and shown to the sender.
"""

from __future__ import annotations


class CitysenseError(Exception):
    """Root of every error citysense raises on purpose."""


class ConfigError(CitysenseError):
    """Bad usage or configuration; the command exits 2 with this one-line message."""


class InputError(CitysenseError):
    """Input from outside (a device, a gateway, an operator) that cannot be accepted.

    ``reason`` is a short stable token (``out_of_range``, ``malformed``...) used for counters
    and dead-letter listings; the message is a human-readable diagnostic.
    """

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class SenmlError(InputError):
    """A SenML payload that is malformed or over a limit."""


class EnvelopeError(InputError):
    """A batch envelope that is malformed or over a limit."""


class RegistryError(InputError):
    """A bad row in a device registry file (with its line number)."""

    def __init__(self, message: str, line: int, reason: str = "bad_row") -> None:
        super().__init__(f"line {line}: {message}", reason)
        self.line = line


class RetryableError(CitysenseError):
    """A transient failure of an external system: back off, keep the data, try again.

    ``retry_after`` (seconds) is the peer's own hint when it gave one (HTTP Retry-After).
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(CitysenseError):
    """A failure that retrying cannot fix: the data is dead-lettered with this reason."""

    def __init__(self, message: str, reason: str = "rejected") -> None:
        super().__init__(message)
        self.reason = reason
