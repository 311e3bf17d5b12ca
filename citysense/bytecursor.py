"""A cursor over one bytes object, for the hand-written binary decoders (SenML's CBOR shape,
the embedded broker's MQTT packets).

Running short is the error every such decoder shares; each names it in its own terms by
overriding :meth:`ByteCursor.short`, so that truncated input raises that decoder's error and
nothing else.
"""

from __future__ import annotations


class ByteCursor:
    """Reads ``data`` front to back from ``pos``."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def short(self) -> Exception:
        """The error raised when the input ends inside a field (decoders override it)."""
        return ValueError("input ends in the middle of a field")

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes; :meth:`short`'s error if fewer are left."""
        end = self.pos + n
        if end > len(self.data):
            raise self.short()
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def at_end(self) -> bool:
        return self.pos >= len(self.data)
