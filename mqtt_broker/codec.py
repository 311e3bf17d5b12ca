"""Sans-I/O MQTT codec: variable integers, properties, packet framing and encoders."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from citysense.bytecursor import ByteCursor
from mqtt_broker.constants import (
    CONNACK,
    DISCONNECT,
    MALFORMED_PACKET,
    MQTT_5,
    PACKET_TOO_LARGE,
    PINGRESP,
    PROPERTY_TYPES,
    PROTOCOL_ERROR,
    PUBLISH,
    PUBREL,
    REASON_STRING,
    REPEATABLE,
    SUBACK,
    SUCCESS,
    T_BINARY,
    T_BYTE,
    T_PAIR,
    T_U16,
    T_U32,
    T_UTF8,
    T_VARINT,
    UNSUBACK,
    VARINT_MAX,
    Properties,
    ProtocolError,
)

log = logging.getLogger("mqtt_broker")

# --------------------------------------------------------------------------- codec


class Reader(ByteCursor):
    """Reads MQTT data types from one packet body; running short is a malformed packet."""

    __slots__ = ()

    def short(self) -> Exception:
        return ProtocolError(MALFORMED_PACKET, "packet ends in the middle of a field")

    def byte(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def varint(self) -> int:
        value = 0
        for shift in (0, 7, 14, 21):
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
        raise ProtocolError(MALFORMED_PACKET, "variable byte integer longer than 4 bytes")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def utf8(self) -> str:
        raw = self.binary()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(MALFORMED_PACKET, "string is not valid UTF-8") from exc
        if "\x00" in text:
            raise ProtocolError(MALFORMED_PACKET, "string contains U+0000")
        return text

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk

    def properties(self, allowed: frozenset[int], where: str) -> Properties:
        length = self.varint()
        end = self.pos + length
        if end > len(self.data):
            raise ProtocolError(MALFORMED_PACKET, f"{where} properties run past the packet")
        props: Properties = {}
        while self.pos < end:
            ident = self.varint()
            kind = PROPERTY_TYPES.get(ident)
            if kind is None:
                raise ProtocolError(MALFORMED_PACKET, f"unknown property 0x{ident:02x}")
            if ident not in allowed:
                raise ProtocolError(
                    PROTOCOL_ERROR, f"property 0x{ident:02x} not allowed in {where}"
                )
            value = _READ_PROPERTY[kind](self)
            if ident in REPEATABLE:
                props.setdefault(ident, []).append(value)
            elif ident in props:
                raise ProtocolError(PROTOCOL_ERROR, f"property 0x{ident:02x} given twice")
            else:
                props[ident] = value
        if self.pos != end:
            raise ProtocolError(MALFORMED_PACKET, f"{where} properties have a bad length")
        return props


#: property type -> how its value is read
_READ_PROPERTY: Mapping[int, Callable[[Reader], Any]] = {
    T_BYTE: Reader.byte,
    T_U16: Reader.u16,
    T_U32: Reader.u32,
    T_VARINT: Reader.varint,
    T_UTF8: Reader.utf8,
    T_BINARY: Reader.binary,
    T_PAIR: lambda r: (r.utf8(), r.utf8()),
}


def encode_varint(n: int) -> bytes:
    if not 0 <= n <= VARINT_MAX:
        raise ValueError(f"variable byte integer out of range: {n}")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def _bin(b: bytes) -> bytes:
    return _u16(len(b)) + b


def _str(s: str) -> bytes:
    return _bin(s.encode("utf-8"))


#: property type -> how its value is written
_WRITE_PROPERTY: Mapping[int, Callable[[Any], bytes]] = {
    T_BYTE: lambda v: bytes((v,)),
    T_U16: _u16,
    T_U32: lambda v: v.to_bytes(4, "big"),
    T_VARINT: encode_varint,
    T_UTF8: _str,
    T_BINARY: _bin,
    T_PAIR: lambda v: _str(v[0]) + _str(v[1]),
}


def encode_properties(props: Mapping[int, Any]) -> bytes:
    out = bytearray()
    for ident, value in props.items():
        kind = PROPERTY_TYPES[ident]
        values = value if ident in REPEATABLE else [value]
        for v in values:
            out += encode_varint(ident)
            out += _WRITE_PROPERTY[kind](v)
    return encode_varint(len(out)) + bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + encode_varint(len(body)) + body


class PacketFramer:
    """Splits a byte stream into (first byte, body) frames; refuses frames over a size."""

    __slots__ = ("_buf", "max_packet_size")

    def __init__(self, max_packet_size: int) -> None:
        self._buf = bytearray()
        self.max_packet_size = max_packet_size

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        frames: list[tuple[int, bytes]] = []
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            length = 0
            i = pos + 1
            for shift in (0, 7, 14, 21):
                if i >= n:
                    length = -1
                    break
                b = buf[i]
                i += 1
                length |= (b & 0x7F) << shift
                if not b & 0x80:
                    break
            else:
                raise ProtocolError(MALFORMED_PACKET, "remaining length longer than 4 bytes")
            if length < 0:
                break
            total = i - pos + length
            if total > self.max_packet_size:
                raise ProtocolError(
                    PACKET_TOO_LARGE,
                    f"packet of {total} bytes is over the limit of {self.max_packet_size}",
                )
            if n - pos < total:
                break
            frames.append((buf[pos], bytes(buf[i : pos + total])))
            pos += total
        if pos:
            del buf[:pos]
        return frames


def encode_connack(
    version: int, session_present: bool, reason: int, props: Mapping[int, Any] | None = None
) -> bytes:
    body = bytes([1 if session_present else 0, reason])
    if version == MQTT_5:
        body += encode_properties(props or {})
    return _packet(CONNACK << 4, body)


def encode_publish(
    version: int,
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    dup: bool,
    packet_id: int,
    props: Mapping[int, Any] | None = None,
) -> bytes:
    first = (PUBLISH << 4) | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    body = _str(topic)
    if qos:
        body += _u16(packet_id)
    if version == MQTT_5:
        body += encode_properties(props or {})
    return _packet(first, body + payload)


def encode_ack(kind: int, version: int, packet_id: int, reason: int = SUCCESS) -> bytes:
    first = (kind << 4) | (0x02 if kind == PUBREL else 0)
    body = _u16(packet_id)
    if version == MQTT_5 and reason != SUCCESS:
        body += bytes([reason])
    return _packet(first, body)


def encode_suback(version: int, packet_id: int, codes: Iterable[int]) -> bytes:
    body = _u16(packet_id)
    if version == MQTT_5:
        body += encode_properties({})
    return _packet(SUBACK << 4, body + bytes(codes))


def encode_unsuback(version: int, packet_id: int, codes: Iterable[int]) -> bytes:
    body = _u16(packet_id)
    if version == MQTT_5:
        body += encode_properties({}) + bytes(codes)
    return _packet(UNSUBACK << 4, body)


def encode_disconnect(reason: int, reason_string: str | None = None) -> bytes:
    props = {REASON_STRING: reason_string[:200]} if reason_string else {}
    return _packet(DISCONNECT << 4, bytes([reason]) + encode_properties(props))


PINGRESP_BYTES = _packet(PINGRESP << 4, b"")
