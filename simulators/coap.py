"""A small sans-I/O CoAP message codec (RFC 7252 section 3) for the simulated devices.

Only what a device needs: the fixed header, tokens, options (delta/length encoding with the
13/14 extensions) and the payload marker. :func:`decode` raises :class:`CoapError` for any
malformed datagram and never another exception type. No sockets, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from citysense.errors import InputError

VERSION = 1
CON, NON, ACK, RST = 0, 1, 2, 3
TYPE_NAMES = ("CON", "NON", "ACK", "RST")

EMPTY = 0
GET, POST, PUT, DELETE = 1, 2, 3, 4

# option numbers
URI_PATH = 11
CONTENT_FORMAT = 12
MAX_AGE = 14
ACCEPT = 17


def code(cls: int, detail: int) -> int:
    """``code(2, 4)`` is 2.04 Changed."""
    return (cls << 5) | detail


CHANGED = code(2, 4)
BAD_REQUEST = code(4, 0)
FORBIDDEN = code(4, 3)
REQUEST_ENTITY_TOO_LARGE = code(4, 13)
UNSUPPORTED_CONTENT_FORMAT = code(4, 15)
SERVICE_UNAVAILABLE = code(5, 3)


def code_text(c: int) -> str:
    """2.04-style text of a code."""
    return f"{c >> 5}.{c & 0x1F:02d}"


class CoapError(InputError):
    """A datagram that is not a well-formed CoAP message."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "malformed_coap")


@dataclass(frozen=True, slots=True)
class Message:
    """One CoAP message; options are (number, value) pairs in any order."""

    type: int
    code: int
    mid: int
    token: bytes = b""
    options: tuple[tuple[int, bytes], ...] = ()
    payload: bytes = b""

    def option(self, number: int) -> bytes | None:
        """The first value of option ``number``, or ``None``."""
        for n, v in self.options:
            if n == number:
                return v
        return None

    def uint_option(self, number: int) -> int | None:
        raw = self.option(number)
        return None if raw is None else int.from_bytes(raw, "big")


def uint_bytes(value: int) -> bytes:
    """An option's uint value in the fewest bytes (0 is the empty string)."""
    if value < 0:
        raise ValueError("uint options are not negative")
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def uri_path(path: str) -> tuple[tuple[int, bytes], ...]:
    """Uri-Path options of ``/a/b``."""
    return tuple((URI_PATH, seg.encode()) for seg in path.strip("/").split("/") if seg)


def _nibble(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes([value - 13])
    if value < 65805:
        return 14, (value - 269).to_bytes(2, "big")
    raise ValueError("option delta or length too large")


def encode(msg: Message) -> bytes:
    """The datagram of ``msg``."""
    if not 0 <= msg.mid <= 0xFFFF:
        raise ValueError("message id out of range")
    if len(msg.token) > 8:
        raise ValueError("token longer than 8 bytes")
    out = bytearray(
        (
            (VERSION << 6) | (msg.type << 4) | len(msg.token),
            msg.code,
            msg.mid >> 8,
            msg.mid & 0xFF,
        )
    )
    out += msg.token
    last = 0
    for number, value in sorted(msg.options, key=lambda o: o[0]):
        d, dext = _nibble(number - last)
        n, lext = _nibble(len(value))
        out.append((d << 4) | n)
        out += dext + lext + value
        last = number
    if msg.payload:
        out.append(0xFF)
        out += msg.payload
    return bytes(out)


def _extended(nibble: int, data: bytes, pos: int) -> tuple[int, int]:
    if nibble < 13:
        return nibble, pos
    if nibble == 13:
        if pos >= len(data):
            raise CoapError("truncated option")
        return data[pos] + 13, pos + 1
    if nibble == 14:
        if pos + 2 > len(data):
            raise CoapError("truncated option")
        return int.from_bytes(data[pos : pos + 2], "big") + 269, pos + 2
    raise CoapError("reserved option nibble 15")


def decode(data: bytes) -> Message:
    """Parse a datagram; raises :class:`CoapError` when it is not CoAP."""
    if len(data) < 4:
        raise CoapError("datagram shorter than the CoAP header")
    first = data[0]
    if first >> 6 != VERSION:
        raise CoapError(f"CoAP version {first >> 6}")
    mtype, tkl = (first >> 4) & 0x3, first & 0xF
    if tkl > 8:
        raise CoapError("token length over 8")
    c = data[1]
    mid = (data[2] << 8) | data[3]
    pos = 4 + tkl
    if pos > len(data):
        raise CoapError("truncated token")
    token = data[4:pos]
    options: list[tuple[int, bytes]] = []
    number = 0
    payload = b""
    while pos < len(data):
        byte = data[pos]
        pos += 1
        if byte == 0xFF:
            payload = data[pos:]
            if not payload:
                raise CoapError("payload marker without a payload")
            break
        delta, pos = _extended(byte >> 4, data, pos)
        length, pos = _extended(byte & 0xF, data, pos)
        if pos + length > len(data):
            raise CoapError("truncated option value")
        number += delta
        options.append((number, data[pos : pos + length]))
        pos += length
    if c == EMPTY and (tkl or options or payload):
        raise CoapError("an empty message carries nothing")
    return Message(mtype, c, mid, token, tuple(options), payload)


def empty_ack(mid: int) -> bytes:
    """The empty ACK of a received CON."""
    return encode(Message(ACK, EMPTY, mid))


def reset(mid: int) -> bytes:
    return encode(Message(RST, EMPTY, mid))


def post(
    mid: int,
    token: bytes,
    path: str,
    payload: bytes,
    content_format: int,
    extra: Iterable[tuple[int, bytes]] = (),
) -> bytes:
    """A confirmable POST."""
    options = (*uri_path(path), (CONTENT_FORMAT, uint_bytes(content_format)), *extra)
    return encode(Message(CON, POST, mid, token, options, payload))
