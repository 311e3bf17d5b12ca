"""An embedded MQTT broker (MQTT 3.1.1 and 5.0 over TCP), in-process, standard library only.

``citysense demo`` runs the whole city on one machine without a system service; this broker is
its MQTT server. It is small but keeps to the protocol where citysense's clients depend on it:

* CONNECT/CONNACK for 3.1.1 and 5.0 (Session Expiry Interval, Receive Maximum, Maximum Packet
  Size); the CONNACK advertises Retain, Wildcard and Shared Subscriptions available, Topic
  Alias Maximum 0 and Subscription Identifiers not available.
* PUBLISH at QoS 0, 1 and 2 from clients (QoS 2 with the PUBREC/PUBREL/PUBCOMP handshake,
  delivered once); subscriptions are granted at most QoS 1, so the broker never *sends* QoS 2.
* Wildcards ``+``/``#`` (not matching ``$`` topics at the first level), shared subscriptions
  ``$share/{group}/{filter}`` delivered round-robin among the group's online members with room
  in their window; a group with no such member keeps the message in the group's own queue
  until a member can take it. Messages of a shared subscription still held by a session that
  ends are handed to the group again.
* Retained messages; Last Will (on an abnormal disconnect, after its Will Delay Interval or
  when the session ends, whichever is first; not sent if the client is back in time); session
  takeover; persistent sessions in memory (subscriptions, queued and unacknowledged QoS 1
  messages; unacknowledged ones are re-sent with DUP on resumption); Message Expiry Interval.
* Flow control: at most Receive Maximum (v5) or ``default_receive_maximum`` (3.1.1)
  unacknowledged QoS 1 messages per client; per-session queues bounded by
  ``max_queued_messages``, overflow dropped, counted and logged as one aggregated warning.
* A protocol violation closes only the offending connection (v5: DISCONNECT or CONNACK with a
  reason code and a reason string first).

Not supported: enhanced authentication (AUTH), topic aliases, subscription identifiers, TLS,
username/password checks (it listens on loopback for one machine), persistence to disk.

Layout: a sans-I/O codec (:class:`PacketFramer`, ``decode_*``/``encode_*``), the session logic
(:class:`BrokerCore`, :class:`Connection`) that reads frames and writes bytes through two
callables, and a thin asyncio server (:class:`Broker`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from citysense.errors import InputError

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- constants

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = range(8, 16)

MQTT_311 = 4
MQTT_5 = 5

# Reason codes (MQTT 5.0 section 2.4).
SUCCESS = 0x00
DISCONNECT_WITH_WILL = 0x04
NO_SUBSCRIPTION_EXISTED = 0x11
UNSPECIFIED_ERROR = 0x80
MALFORMED_PACKET = 0x81
PROTOCOL_ERROR = 0x82
UNSUPPORTED_PROTOCOL_VERSION = 0x84
CLIENT_ID_NOT_VALID = 0x85
SERVER_SHUTTING_DOWN = 0x8B
BAD_AUTHENTICATION_METHOD = 0x8C
KEEP_ALIVE_TIMEOUT = 0x8D
SESSION_TAKEN_OVER = 0x8E
TOPIC_FILTER_INVALID = 0x8F
TOPIC_NAME_INVALID = 0x90
TOPIC_ALIAS_INVALID = 0x94
PACKET_TOO_LARGE = 0x95
SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1

# MQTT 3.1.1 CONNACK return codes.
V3_UNACCEPTABLE_PROTOCOL_VERSION = 0x01
V3_IDENTIFIER_REJECTED = 0x02
V3_SUBSCRIBE_FAILURE = 0x80

# Property identifiers (MQTT 5.0 section 2.2.2.2).
PAYLOAD_FORMAT_INDICATOR = 0x01
MESSAGE_EXPIRY_INTERVAL = 0x02
CONTENT_TYPE = 0x03
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
SUBSCRIPTION_IDENTIFIER = 0x0B
SESSION_EXPIRY_INTERVAL = 0x11
ASSIGNED_CLIENT_IDENTIFIER = 0x12
SERVER_KEEP_ALIVE = 0x13
AUTHENTICATION_METHOD = 0x15
AUTHENTICATION_DATA = 0x16
REQUEST_PROBLEM_INFORMATION = 0x17
WILL_DELAY_INTERVAL = 0x18
REQUEST_RESPONSE_INFORMATION = 0x19
RESPONSE_INFORMATION = 0x1A
SERVER_REFERENCE = 0x1C
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
MAXIMUM_QOS = 0x24
RETAIN_AVAILABLE = 0x25
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27
WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
SHARED_SUBSCRIPTION_AVAILABLE = 0x2A

_BYTE, _U16, _U32, _VARINT, _UTF8, _BINARY, _PAIR = range(7)
_PROPERTY_TYPES: Mapping[int, int] = {
    PAYLOAD_FORMAT_INDICATOR: _BYTE,
    MESSAGE_EXPIRY_INTERVAL: _U32,
    CONTENT_TYPE: _UTF8,
    RESPONSE_TOPIC: _UTF8,
    CORRELATION_DATA: _BINARY,
    SUBSCRIPTION_IDENTIFIER: _VARINT,
    SESSION_EXPIRY_INTERVAL: _U32,
    ASSIGNED_CLIENT_IDENTIFIER: _UTF8,
    SERVER_KEEP_ALIVE: _U16,
    AUTHENTICATION_METHOD: _UTF8,
    AUTHENTICATION_DATA: _BINARY,
    REQUEST_PROBLEM_INFORMATION: _BYTE,
    WILL_DELAY_INTERVAL: _U32,
    REQUEST_RESPONSE_INFORMATION: _BYTE,
    RESPONSE_INFORMATION: _UTF8,
    SERVER_REFERENCE: _UTF8,
    REASON_STRING: _UTF8,
    RECEIVE_MAXIMUM: _U16,
    TOPIC_ALIAS_MAXIMUM: _U16,
    TOPIC_ALIAS: _U16,
    MAXIMUM_QOS: _BYTE,
    RETAIN_AVAILABLE: _BYTE,
    USER_PROPERTY: _PAIR,
    MAXIMUM_PACKET_SIZE: _U32,
    WILDCARD_SUBSCRIPTION_AVAILABLE: _BYTE,
    SUBSCRIPTION_IDENTIFIER_AVAILABLE: _BYTE,
    SHARED_SUBSCRIPTION_AVAILABLE: _BYTE,
}
_REPEATABLE = frozenset({USER_PROPERTY, SUBSCRIPTION_IDENTIFIER})
# Properties a client may send, per packet (MQTT 5.0 table 2-4).
_CONNECT_PROPS = frozenset(
    {
        SESSION_EXPIRY_INTERVAL,
        RECEIVE_MAXIMUM,
        MAXIMUM_PACKET_SIZE,
        TOPIC_ALIAS_MAXIMUM,
        REQUEST_RESPONSE_INFORMATION,
        REQUEST_PROBLEM_INFORMATION,
        USER_PROPERTY,
        AUTHENTICATION_METHOD,
        AUTHENTICATION_DATA,
    }
)
_WILL_PROPS = frozenset(
    {
        WILL_DELAY_INTERVAL,
        PAYLOAD_FORMAT_INDICATOR,
        MESSAGE_EXPIRY_INTERVAL,
        CONTENT_TYPE,
        RESPONSE_TOPIC,
        CORRELATION_DATA,
        USER_PROPERTY,
    }
)
_PUBLISH_PROPS = frozenset(
    {
        PAYLOAD_FORMAT_INDICATOR,
        MESSAGE_EXPIRY_INTERVAL,
        TOPIC_ALIAS,
        RESPONSE_TOPIC,
        CORRELATION_DATA,
        USER_PROPERTY,
        SUBSCRIPTION_IDENTIFIER,
        CONTENT_TYPE,
    }
)
_ACK_PROPS = frozenset({REASON_STRING, USER_PROPERTY})
_SUBSCRIBE_PROPS = frozenset({SUBSCRIPTION_IDENTIFIER, USER_PROPERTY})
_UNSUBSCRIBE_PROPS = frozenset({USER_PROPERTY})
_DISCONNECT_PROPS = frozenset(
    {SESSION_EXPIRY_INTERVAL, REASON_STRING, USER_PROPERTY, SERVER_REFERENCE}
)
# Application-message properties passed on to v5 subscribers (expiry is recomputed).
_FORWARDED = frozenset(
    {PAYLOAD_FORMAT_INDICATOR, CONTENT_TYPE, RESPONSE_TOPIC, CORRELATION_DATA, USER_PROPERTY}
)

NEVER_EXPIRES = 0xFFFFFFFF
_VARINT_MAX = 268_435_455

Properties = dict[int, Any]


class ProtocolError(InputError):
    """A peer broke the MQTT protocol; ``reason_code`` is the MQTT 5 reason code to send."""

    def __init__(self, reason_code: int, message: str) -> None:
        super().__init__(message, reason="mqtt_protocol")
        self.reason_code = reason_code


# --------------------------------------------------------------------------- codec


class _Reader:
    """Reads MQTT data types from one packet body; running short is a malformed packet."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise ProtocolError(MALFORMED_PACKET, "packet ends in the middle of a field")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def byte(self) -> int:
        return self._take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self._take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self._take(4), "big")

    def varint(self) -> int:
        value = 0
        for shift in (0, 7, 14, 21):
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
        raise ProtocolError(MALFORMED_PACKET, "variable byte integer longer than 4 bytes")

    def binary(self) -> bytes:
        return self._take(self.u16())

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
            kind = _PROPERTY_TYPES.get(ident)
            if kind is None:
                raise ProtocolError(MALFORMED_PACKET, f"unknown property 0x{ident:02x}")
            if ident not in allowed:
                raise ProtocolError(
                    PROTOCOL_ERROR, f"property 0x{ident:02x} not allowed in {where}"
                )
            value: Any
            if kind == _BYTE:
                value = self.byte()
            elif kind == _U16:
                value = self.u16()
            elif kind == _U32:
                value = self.u32()
            elif kind == _VARINT:
                value = self.varint()
            elif kind == _UTF8:
                value = self.utf8()
            elif kind == _BINARY:
                value = self.binary()
            else:
                value = (self.utf8(), self.utf8())
            if ident in _REPEATABLE:
                props.setdefault(ident, []).append(value)
            elif ident in props:
                raise ProtocolError(PROTOCOL_ERROR, f"property 0x{ident:02x} given twice")
            else:
                props[ident] = value
        if self.pos != end:
            raise ProtocolError(MALFORMED_PACKET, f"{where} properties have a bad length")
        return props


def encode_varint(n: int) -> bytes:
    if not 0 <= n <= _VARINT_MAX:
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


def encode_properties(props: Mapping[int, Any]) -> bytes:
    out = bytearray()
    for ident, value in props.items():
        kind = _PROPERTY_TYPES[ident]
        values = value if ident in _REPEATABLE else [value]
        for v in values:
            out += encode_varint(ident)
            if kind == _BYTE:
                out.append(v)
            elif kind == _U16:
                out += _u16(v)
            elif kind == _U32:
                out += v.to_bytes(4, "big")
            elif kind == _VARINT:
                out += encode_varint(v)
            elif kind == _UTF8:
                out += _str(v)
            elif kind == _BINARY:
                out += _bin(v)
            else:
                out += _str(v[0]) + _str(v[1])
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


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties = field(hash=False)


@dataclass(frozen=True, slots=True)
class Connect:
    version: int
    client_id: str
    clean_start: bool
    keepalive: int
    properties: Properties = field(hash=False)
    will: Will | None
    username: str | None
    password: bytes | None


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int
    properties: Properties = field(hash=False)


@dataclass(frozen=True, slots=True)
class Ack:
    """PUBACK, PUBREC, PUBREL or PUBCOMP."""

    kind: int
    packet_id: int
    reason_code: int


@dataclass(frozen=True, slots=True)
class SubscriptionRequest:
    filter: str
    qos: int
    no_local: bool
    retain_as_published: bool
    retain_handling: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    requests: tuple[SubscriptionRequest, ...]
    properties: Properties = field(hash=False)


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    filters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PingReq:
    pass


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason_code: int
    properties: Properties = field(hash=False)


Packet = Publish | Ack | Subscribe | Unsubscribe | PingReq | Disconnect


def sniff_version(body: bytes) -> int:
    """The protocol level of a CONNECT body (before it is decoded), 4 if unreadable."""
    return body[6] if len(body) > 6 and body[:6] == b"\x00\x04MQTT" else MQTT_311


def decode_connect(flags: int, body: bytes) -> Connect:
    if flags:
        raise ProtocolError(MALFORMED_PACKET, "CONNECT with non-zero fixed header flags")
    r = _Reader(body)
    name = r.utf8()
    level = r.byte()
    if name != "MQTT" or level not in (MQTT_311, MQTT_5):
        raise ProtocolError(
            UNSUPPORTED_PROTOCOL_VERSION,
            f"protocol {name!r} level {level} is not supported (MQTT 3.1.1 or 5.0 only)",
        )
    cflags = r.byte()
    if cflags & 0x01:
        raise ProtocolError(MALFORMED_PACKET, "CONNECT reserved flag is set")
    clean = bool(cflags & 0x02)
    will_flag = bool(cflags & 0x04)
    will_qos = (cflags >> 3) & 0x03
    will_retain = bool(cflags & 0x20)
    has_password = bool(cflags & 0x40)
    has_username = bool(cflags & 0x80)
    if will_qos == 3:
        raise ProtocolError(MALFORMED_PACKET, "Will QoS 3")
    if not will_flag and (will_qos or will_retain):
        raise ProtocolError(MALFORMED_PACKET, "Will QoS/Retain set without a Will")
    if level == MQTT_311 and has_password and not has_username:
        raise ProtocolError(MALFORMED_PACKET, "password without user name")
    keepalive = r.u16()
    props = r.properties(_CONNECT_PROPS, "CONNECT") if level == MQTT_5 else {}
    client_id = r.utf8()
    will = None
    if will_flag:
        will_props = r.properties(_WILL_PROPS, "Will") if level == MQTT_5 else {}
        will_topic = r.utf8()
        will = Will(will_topic, r.binary(), will_qos, will_retain, will_props)
    username = r.utf8() if has_username else None
    password = r.binary() if has_password else None
    if not r.at_end():
        raise ProtocolError(MALFORMED_PACKET, "extra bytes after the CONNECT payload")
    return Connect(level, client_id, clean, keepalive, props, will, username, password)


def decode_packet(first: int, body: bytes, version: int) -> Packet:
    """Decode a client-to-server packet other than CONNECT."""
    kind, flags = first >> 4, first & 0x0F
    v5 = version == MQTT_5
    r = _Reader(body)
    if kind == PUBLISH:
        qos = (flags >> 1) & 0x03
        if qos == 3:
            raise ProtocolError(MALFORMED_PACKET, "PUBLISH with QoS 3")
        dup = bool(flags & 0x08)
        if dup and qos == 0:
            raise ProtocolError(MALFORMED_PACKET, "PUBLISH QoS 0 with DUP set")
        topic = r.utf8()
        packet_id = 0
        if qos:
            packet_id = r.u16()
            if packet_id == 0:
                raise ProtocolError(MALFORMED_PACKET, "PUBLISH with packet identifier 0")
        props = r.properties(_PUBLISH_PROPS, "PUBLISH") if v5 else {}
        return Publish(topic, r.rest(), qos, bool(flags & 0x01), dup, packet_id, props)
    expected_flags = 0x02 if kind in (PUBREL, SUBSCRIBE, UNSUBSCRIBE) else 0
    if flags != expected_flags:
        raise ProtocolError(MALFORMED_PACKET, f"packet type {kind} with bad fixed header flags")
    if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        packet_id = r.u16()
        reason = SUCCESS
        if v5 and not r.at_end():
            reason = r.byte()
            if not r.at_end():
                r.properties(_ACK_PROPS, "acknowledgement")
        if not r.at_end():
            raise ProtocolError(MALFORMED_PACKET, "extra bytes after an acknowledgement")
        return Ack(kind, packet_id, reason)
    if kind == SUBSCRIBE:
        packet_id = r.u16()
        if packet_id == 0:
            raise ProtocolError(MALFORMED_PACKET, "SUBSCRIBE with packet identifier 0")
        props = r.properties(_SUBSCRIBE_PROPS, "SUBSCRIBE") if v5 else {}
        requests: list[SubscriptionRequest] = []
        while not r.at_end():
            flt = r.utf8()
            opts = r.byte()
            qos = opts & 0x03
            if qos == 3:
                raise ProtocolError(MALFORMED_PACKET, "subscription with QoS 3")
            if v5:
                if opts & 0xC0:
                    raise ProtocolError(MALFORMED_PACKET, "subscription options reserved bits set")
                handling = (opts >> 4) & 0x03
                if handling == 3:
                    raise ProtocolError(PROTOCOL_ERROR, "Retain Handling 3")
                requests.append(
                    SubscriptionRequest(flt, qos, bool(opts & 0x04), bool(opts & 0x08), handling)
                )
            else:
                if opts & 0xFC:
                    raise ProtocolError(MALFORMED_PACKET, "subscription options reserved bits set")
                requests.append(SubscriptionRequest(flt, qos, False, False, 0))
        if not requests:
            raise ProtocolError(PROTOCOL_ERROR, "SUBSCRIBE without a topic filter")
        return Subscribe(packet_id, tuple(requests), props)
    if kind == UNSUBSCRIBE:
        packet_id = r.u16()
        if packet_id == 0:
            raise ProtocolError(MALFORMED_PACKET, "UNSUBSCRIBE with packet identifier 0")
        if v5:
            r.properties(_UNSUBSCRIBE_PROPS, "UNSUBSCRIBE")
        filters: list[str] = []
        while not r.at_end():
            filters.append(r.utf8())
        if not filters:
            raise ProtocolError(PROTOCOL_ERROR, "UNSUBSCRIBE without a topic filter")
        return Unsubscribe(packet_id, tuple(filters))
    if kind == PINGREQ:
        if body:
            raise ProtocolError(MALFORMED_PACKET, "PINGREQ with a body")
        return PingReq()
    if kind == DISCONNECT:
        reason = SUCCESS
        dprops: Properties = {}
        if v5 and not r.at_end():
            reason = r.byte()
            if not r.at_end():
                dprops = r.properties(_DISCONNECT_PROPS, "DISCONNECT")
        if not r.at_end():
            raise ProtocolError(MALFORMED_PACKET, "extra bytes after DISCONNECT")
        return Disconnect(reason, dprops)
    if kind == CONNECT:
        raise ProtocolError(PROTOCOL_ERROR, "second CONNECT on one connection")
    if kind == AUTH:
        raise ProtocolError(PROTOCOL_ERROR, "AUTH without an authentication method")
    raise ProtocolError(PROTOCOL_ERROR, f"packet type {kind} may not be sent by a client")


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

# --------------------------------------------------------------------------- topics


def validate_topic_name(topic: str) -> None:
    if not topic:
        raise ProtocolError(TOPIC_NAME_INVALID, "empty topic name")
    if "+" in topic or "#" in topic:
        raise ProtocolError(TOPIC_NAME_INVALID, f"topic name {topic!r} contains a wildcard")


def validate_topic_filter(flt: str) -> None:
    if not flt:
        raise ProtocolError(TOPIC_FILTER_INVALID, "empty topic filter")
    levels = flt.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ProtocolError(TOPIC_FILTER_INVALID, f"bad '#' in topic filter {flt!r}")
        if "+" in level and level != "+":
            raise ProtocolError(TOPIC_FILTER_INVALID, f"bad '+' in topic filter {flt!r}")


def split_shared(flt: str) -> tuple[str | None, str]:
    """``$share/{group}/{filter}`` -> (group, filter); any other filter -> (None, filter)."""
    if not flt.startswith("$share/"):
        return None, flt
    parts = flt.split("/", 2)
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise ProtocolError(TOPIC_FILTER_INVALID, f"shared subscription {flt!r} is malformed")
    group = parts[1]
    if "+" in group or "#" in group:
        raise ProtocolError(TOPIC_FILTER_INVALID, f"share name {group!r} contains a wildcard")
    return group, parts[2]


def topic_matches(filter_levels: tuple[str, ...], topic_levels: list[str]) -> bool:
    """Whether a split topic filter matches a split topic name (MQTT 4.7)."""
    if topic_levels[0].startswith("$") and filter_levels[0] in ("+", "#"):
        return False
    n = len(topic_levels)
    for i, f in enumerate(filter_levels):
        if f == "#":
            return True
        if i >= n or (f != "+" and f != topic_levels[i]):
            return False
    return len(filter_levels) == n


# --------------------------------------------------------------------------- sessions


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Limits of the embedded broker."""

    max_packet_size: int = 16 * 1024 * 1024
    #: messages queued per session (and per shared-subscription group) before drops.
    max_queued_messages: int = 1_000_000
    #: unacknowledged QoS 1 messages per MQTT 3.1.1 client (v5 clients set their own).
    default_receive_maximum: int = 1000
    #: seconds a new connection has to send CONNECT.
    connect_timeout: float = 10.0
    #: bytes written to a client but not yet taken by it, above which QoS 0 is dropped.
    max_write_buffer: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Message:
    """An application message as the broker holds it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties = field(hash=False)
    expires_at: float | None
    sender: str


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message on its way to one session, at the QoS of that subscription."""

    message: Message
    qos: int
    retain: bool
    group: tuple[str, str] | None


@dataclass(frozen=True, slots=True)
class Subscription:
    filter: str
    levels: tuple[str, ...]
    qos: int
    no_local: bool
    retain_as_published: bool
    group: str | None

    @property
    def group_key(self) -> tuple[str, str]:
        return (self.group or "", "/".join(self.levels))


class SharedGroup:
    """The members of one ``$share/{group}/{filter}`` and its messages nobody could take."""

    __slots__ = ("backlog", "cursor", "levels", "members")

    def __init__(self, levels: tuple[str, ...]) -> None:
        self.levels = levels
        self.members: dict[str, int] = {}  # client id -> granted QoS
        self.cursor = 0
        self.backlog: deque[Message] = deque()


class Session:
    """What the broker keeps for one client id, online or not."""

    __slots__ = (
        "client_id",
        "conn",
        "expires_at",
        "expiry",
        "inbound_qos2",
        "inflight",
        "next_id",
        "queue",
        "subscriptions",
    )

    def __init__(self, client_id: str, expiry: int) -> None:
        self.client_id = client_id
        self.expiry = expiry
        self.expires_at: float | None = None
        self.subscriptions: dict[str, Subscription] = {}
        self.queue: deque[Delivery] = deque()
        self.inflight: dict[int, Delivery] = {}
        self.inbound_qos2: set[int] = set()
        self.next_id = 1
        self.conn: Connection | None = None

    def allocate_id(self) -> int:
        while True:
            pid = self.next_id
            self.next_id = pid % 65535 + 1
            if pid not in self.inflight:
                return pid


@dataclass(slots=True)
class BrokerStats:
    """Counters since start (see :meth:`BrokerCore.metrics`)."""

    connections_total: int = 0
    messages_received: int = 0
    messages_sent: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    messages_unrouted: int = 0
    dropped_queue_full: int = 0
    dropped_too_large: int = 0
    dropped_expired: int = 0
    dropped_no_subscriber: int = 0
    dropped_slow_reader: int = 0
    redelivered: int = 0
    wills_published: int = 0
    protocol_errors: int = 0
    takeovers: int = 0


class Connection:
    """One network connection, sans I/O: bytes in through :meth:`receive`, out through ``send``."""

    __slots__ = (
        "_close",
        "_send",
        "buffered",
        "clean",
        "client_id",
        "closing",
        "core",
        "deadline",
        "framer",
        "keepalive",
        "max_packet_size",
        "peer",
        "receive_maximum",
        "session",
        "version",
        "will",
        "will_delay",
    )

    def __init__(
        self,
        core: BrokerCore,
        send: Callable[[bytes], None],
        close: Callable[[], None],
        peer: str,
        buffered: Callable[[], int] | None = None,
    ) -> None:
        self.core = core
        self._send = send
        self._close = close
        #: bytes written but not yet sent to the peer.
        self.buffered: Callable[[], int] = buffered or (lambda: 0)
        self.peer = peer
        self.framer = PacketFramer(core.config.max_packet_size)
        self.version = 0  # 0 until CONNECT is accepted
        self.client_id: str | None = None
        self.session: Session | None = None
        self.will: Message | None = None
        self.will_delay = 0
        self.keepalive = 0
        self.deadline: float | None = core.clock() + core.config.connect_timeout
        self.receive_maximum = core.config.default_receive_maximum
        self.max_packet_size = _VARINT_MAX
        self.closing = False
        self.clean = False

    def __repr__(self) -> str:
        return f"<mqtt client {self.client_id or '?'} from {self.peer}>"

    def receive(self, data: bytes) -> None:
        if self.closing:
            return
        self.core.stats.bytes_received += len(data)
        try:
            frames = self.framer.feed(data)
        except ProtocolError as exc:
            self.core.protocol_error(self, exc)
            return
        for first, body in frames:
            if self.closing:
                return
            self.core.handle_frame(self, first, body)

    def write(self, data: bytes) -> None:
        if not self.closing:
            self.core.stats.bytes_sent += len(data)
            self._send(data)

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self._close()


class BrokerCore:
    """The broker's state and rules, without I/O or an event loop."""

    def __init__(
        self, config: BrokerConfig | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config or BrokerConfig()
        self.clock = clock
        self.stats = BrokerStats()
        self.sessions: dict[str, Session] = {}
        self.groups: dict[tuple[str, str], SharedGroup] = {}
        self.retained: dict[str, Message] = {}
        self.connections: set[Connection] = set()
        #: client id -> (when, Will) of Wills waiting out their Will Delay Interval
        self.delayed_wills: dict[str, tuple[float, Message]] = {}
        self._drops_logged = 0

    # ---- connections

    def open(
        self,
        send: Callable[[bytes], None],
        close: Callable[[], None],
        peer: str,
        buffered: Callable[[], int] | None = None,
    ) -> Connection:
        conn = Connection(self, send, close, peer, buffered)
        self.connections.add(conn)
        self.stats.connections_total += 1
        return conn

    def connection_lost(self, conn: Connection) -> None:
        """The transport is gone (closed by either side)."""
        self.connections.discard(conn)
        conn.closing = True
        session = conn.session
        conn.session = None
        if conn.will is not None and not conn.clean:
            if (
                conn.will_delay
                and session is not None
                and session.conn is conn
                and session.expiry
                and conn.client_id is not None
            ):
                # published when the delay or the session ends, unless the client is back
                due = self.clock() + conn.will_delay
                self.delayed_wills[conn.client_id] = (due, conn.will)
                conn.will = None
            else:
                self._publish_will(conn)
        if session is None or session.conn is not conn:
            return
        session.conn = None
        log.debug("%r disconnected", conn)
        if session.expiry == 0:
            self._end_session(session)
        elif session.expiry != NEVER_EXPIRES:
            session.expires_at = self.clock() + session.expiry

    def protocol_error(self, conn: Connection, exc: ProtocolError) -> None:
        self.stats.protocol_errors += 1
        log.warning("%r broke the MQTT protocol: %s; closing its connection", conn, exc)
        if conn.version == MQTT_5:
            conn.write(encode_disconnect(exc.reason_code, str(exc)))
        conn.close()

    def disconnect(self, conn: Connection, reason: int, text: str) -> None:
        """Close ``conn`` from the broker's side (v5: with a DISCONNECT first)."""
        if conn.version == MQTT_5:
            conn.write(encode_disconnect(reason, text))
        conn.close()

    def handle_frame(self, conn: Connection, first: int, body: bytes) -> None:
        if conn.keepalive:
            conn.deadline = self.clock() + conn.keepalive * 1.5
        try:
            if conn.version == 0:
                self._on_connect(conn, first, body)
                return
            packet = decode_packet(first, body, conn.version)
            if isinstance(packet, Publish):
                self._on_publish(conn, packet)
            elif isinstance(packet, Ack):
                self._on_ack(conn, packet)
            elif isinstance(packet, Subscribe):
                self._on_subscribe(conn, packet)
            elif isinstance(packet, Unsubscribe):
                self._on_unsubscribe(conn, packet)
            elif isinstance(packet, PingReq):
                conn.write(PINGRESP_BYTES)
            else:
                self._on_disconnect(conn, packet)
        except ProtocolError as exc:
            self.protocol_error(conn, exc)

    def tick(self) -> None:
        """Time-driven work: keep-alive and CONNECT timeouts, session expiry, drop logs."""
        now = self.clock()
        for conn in list(self.connections):
            if conn.deadline is not None and now > conn.deadline and not conn.closing:
                log.warning("%r: keep-alive timeout; closing its connection", conn)
                self.disconnect(conn, KEEP_ALIVE_TIMEOUT, "keep alive timeout")
        for session in list(self.sessions.values()):
            if (
                session.conn is None
                and session.expires_at is not None
                and now >= session.expires_at
            ):
                log.debug("session %s expired", session.client_id)
                self._end_session(session)
        for client_id, (due, will) in list(self.delayed_wills.items()):
            if now >= due:
                del self.delayed_wills[client_id]
                self._publish_delayed_will(client_id, will)
        self._log_drops()

    def shutdown(self) -> None:
        """Tell every client the server is going away and close every connection."""
        for conn in list(self.connections):
            conn.will = None
            self.disconnect(conn, SERVER_SHUTTING_DOWN, "server shutting down")
        self.delayed_wills.clear()
        self._log_drops()

    # ---- CONNECT

    def _on_connect(self, conn: Connection, first: int, body: bytes) -> None:
        if first >> 4 != CONNECT:
            raise ProtocolError(PROTOCOL_ERROR, "the first packet must be CONNECT")
        version = sniff_version(body)
        try:
            pkt = decode_connect(first & 0x0F, body)
        except ProtocolError as exc:
            self.stats.protocol_errors += 1
            log.warning("%r sent a bad CONNECT: %s", conn, exc)
            if version == MQTT_5:
                conn.write(
                    encode_connack(MQTT_5, False, exc.reason_code, {REASON_STRING: str(exc)})
                )
            elif exc.reason_code == UNSUPPORTED_PROTOCOL_VERSION:
                conn.write(encode_connack(MQTT_311, False, V3_UNACCEPTABLE_PROTOCOL_VERSION))
            conn.close()
            return
        v5 = pkt.version == MQTT_5

        def refuse(v5_code: int, v3_code: int | None, text: str) -> None:
            self.stats.protocol_errors += 1
            log.warning("%r: CONNECT refused: %s", conn, text)
            if v5:
                conn.write(encode_connack(MQTT_5, False, v5_code, {REASON_STRING: text}))
            elif v3_code is not None:
                conn.write(encode_connack(MQTT_311, False, v3_code))
            conn.close()

        props = pkt.properties
        if AUTHENTICATION_METHOD in props:
            refuse(BAD_AUTHENTICATION_METHOD, None, "enhanced authentication is not supported")
            return
        if props.get(RECEIVE_MAXIMUM) == 0 or props.get(MAXIMUM_PACKET_SIZE) == 0:
            refuse(PROTOCOL_ERROR, None, "Receive Maximum and Maximum Packet Size must not be 0")
            return
        if pkt.will is not None:
            try:
                validate_topic_name(pkt.will.topic)
            except ProtocolError as exc:
                refuse(exc.reason_code, None, f"Will: {exc}")
                return
        client_id = pkt.client_id
        assigned: str | None = None
        if not client_id:
            if not v5 and not pkt.clean_start:
                refuse(
                    CLIENT_ID_NOT_VALID,
                    V3_IDENTIFIER_REJECTED,
                    "empty client id needs a clean session",
                )
                return
            client_id = assigned = "auto-" + uuid.uuid4().hex
        now = self.clock()
        conn.version = pkt.version
        conn.client_id = client_id
        conn.keepalive = pkt.keepalive
        conn.deadline = now + pkt.keepalive * 1.5 if pkt.keepalive else None
        if v5:
            conn.receive_maximum = props.get(RECEIVE_MAXIMUM, 65535)
            conn.max_packet_size = props.get(MAXIMUM_PACKET_SIZE, _VARINT_MAX)
            expiry = props.get(SESSION_EXPIRY_INTERVAL, 0)
        else:
            expiry = 0 if pkt.clean_start else NEVER_EXPIRES
        if pkt.will is not None:
            w = pkt.will
            conn.will = self._message(
                w.topic, w.payload, w.qos, w.retain, w.properties, client_id, now
            )
            conn.will_delay = w.properties.get(WILL_DELAY_INTERVAL, 0)

        session = self.sessions.get(client_id)
        if session is not None and session.conn is not None:
            self._take_over(session.conn, resumed=not pkt.clean_start)
        if (
            session is not None
            and session.conn is None
            and session.expires_at is not None
            and now >= session.expires_at
        ):
            self._end_session(session)
            session = None
        if session is not None and pkt.clean_start:
            self._end_session(session)
            session = None
        # back before its delayed Will was due: the Will is not sent (MQTT 3.1.3.2.2)
        self.delayed_wills.pop(client_id, None)
        present = session is not None
        if session is None:
            session = Session(client_id, expiry)
            self.sessions[client_id] = session
        session.expiry = expiry
        session.expires_at = None
        session.conn = conn
        conn.session = session
        log.debug(
            "%r connected (MQTT %s, session %s, expiry %s)",
            conn,
            "5.0" if v5 else "3.1.1",
            "resumed" if present else "new",
            expiry,
        )
        ack_props: Properties = {}
        if v5:
            ack_props = {
                RETAIN_AVAILABLE: 1,
                MAXIMUM_PACKET_SIZE: self.config.max_packet_size,
                TOPIC_ALIAS_MAXIMUM: 0,
                WILDCARD_SUBSCRIPTION_AVAILABLE: 1,
                SUBSCRIPTION_IDENTIFIER_AVAILABLE: 0,
                SHARED_SUBSCRIPTION_AVAILABLE: 1,
            }
            if assigned:
                ack_props[ASSIGNED_CLIENT_IDENTIFIER] = assigned
        conn.write(encode_connack(pkt.version, present, SUCCESS, ack_props))
        for pid, delivery in list(session.inflight.items()):
            self.stats.redelivered += 1
            self._transmit(session, conn, delivery, pid, dup=True)
        self._pump(session)

    def _take_over(self, old: Connection, resumed: bool) -> None:
        self.stats.takeovers += 1
        log.info("%r: session taken over by a new connection", old)
        if old.will is not None and not (old.will_delay and resumed):
            self._publish_will(old)
        old.will = None
        if old.session is not None:
            old.session.conn = None
        old.session = None
        self.disconnect(old, SESSION_TAKEN_OVER, "session taken over")

    def _on_disconnect(self, conn: Connection, pkt: Disconnect) -> None:
        session = conn.session
        if SESSION_EXPIRY_INTERVAL in pkt.properties and session is not None:
            new_expiry = pkt.properties[SESSION_EXPIRY_INTERVAL]
            if session.expiry == 0 and new_expiry:
                raise ProtocolError(PROTOCOL_ERROR, "Session Expiry set in DISCONNECT after 0")
            session.expiry = new_expiry
        conn.clean = pkt.reason_code != DISCONNECT_WITH_WILL
        if conn.clean:
            conn.will = None
        conn.close()

    # ---- PUBLISH and acknowledgements

    def _message(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        props: Mapping[int, Any],
        sender: str,
        now: float,
    ) -> Message:
        expiry = props.get(MESSAGE_EXPIRY_INTERVAL)
        kept = {k: v for k, v in props.items() if k in _FORWARDED}
        return Message(
            topic, payload, qos, retain, kept, now + expiry if expiry is not None else None, sender
        )

    def _on_publish(self, conn: Connection, pkt: Publish) -> None:
        session = conn.session
        assert session is not None
        if TOPIC_ALIAS in pkt.properties:
            raise ProtocolError(TOPIC_ALIAS_INVALID, "topic aliases are not supported (maximum 0)")
        if SUBSCRIPTION_IDENTIFIER in pkt.properties:
            raise ProtocolError(
                PROTOCOL_ERROR, "PUBLISH from a client with a Subscription Identifier"
            )
        validate_topic_name(pkt.topic)
        self.stats.messages_received += 1
        if pkt.qos == 2:
            duplicate = pkt.packet_id in session.inbound_qos2
            session.inbound_qos2.add(pkt.packet_id)
            if not duplicate:
                self.publish_message(
                    self._message(
                        pkt.topic,
                        pkt.payload,
                        2,
                        pkt.retain,
                        pkt.properties,
                        conn.client_id or "",
                        self.clock(),
                    )
                )
            conn.write(encode_ack(PUBREC, conn.version, pkt.packet_id))
            return
        self.publish_message(
            self._message(
                pkt.topic,
                pkt.payload,
                pkt.qos,
                pkt.retain,
                pkt.properties,
                conn.client_id or "",
                self.clock(),
            )
        )
        if pkt.qos == 1:
            conn.write(encode_ack(PUBACK, conn.version, pkt.packet_id))

    def _on_ack(self, conn: Connection, pkt: Ack) -> None:
        session = conn.session
        assert session is not None
        if pkt.kind == PUBACK:
            if session.inflight.pop(pkt.packet_id, None) is None:
                log.debug("%r acknowledged unknown packet id %s", conn, pkt.packet_id)
            self._pump(session)
        elif pkt.kind == PUBREL:
            session.inbound_qos2.discard(pkt.packet_id)
            conn.write(encode_ack(PUBCOMP, conn.version, pkt.packet_id))
        else:
            # The broker never sends QoS 2, so PUBREC/PUBCOMP refer to nothing.
            raise ProtocolError(PROTOCOL_ERROR, "PUBREC/PUBCOMP for a QoS 2 message never sent")

    def _publish_will(self, conn: Connection) -> None:
        will, conn.will = conn.will, None
        if will is not None:
            self.stats.wills_published += 1
            log.debug("%r: publishing its Will on %s", conn, will.topic)
            self.publish_message(will)

    def _publish_delayed_will(self, client_id: str, will: Message) -> None:
        self.stats.wills_published += 1
        log.debug("client %s: publishing its delayed Will on %s", client_id, will.topic)
        self.publish_message(will)

    def publish_message(self, msg: Message) -> None:
        """Store (if retained) and route one application message to every subscriber."""
        if msg.retain:
            if msg.payload:
                self.retained[msg.topic] = msg
            else:
                self.retained.pop(msg.topic, None)
        levels = msg.topic.split("/")
        routed = False
        for session in self.sessions.values():
            best: Subscription | None = None
            for sub in session.subscriptions.values():
                if sub.group is not None or not topic_matches(sub.levels, levels):
                    continue
                if sub.no_local and msg.sender == session.client_id:
                    continue
                if best is None or sub.qos > best.qos:
                    best = sub
            if best is not None:
                routed = True
                self._enqueue(
                    session,
                    Delivery(
                        msg, min(msg.qos, best.qos), msg.retain and best.retain_as_published, None
                    ),
                )
        for key, group in self.groups.items():
            if topic_matches(group.levels, levels):
                routed = True
                self._deliver_shared(key, group, msg)
        if not routed:
            self.stats.messages_unrouted += 1

    # ---- delivery

    def _deliver_shared(self, key: tuple[str, str], group: SharedGroup, msg: Message) -> None:
        members = list(group.members)
        n = len(members)
        for i in range(n):
            client_id = members[(group.cursor + i) % n]
            session = self.sessions.get(client_id)
            if session is None or session.conn is None:
                continue
            has_room = not session.queue and len(session.inflight) < session.conn.receive_maximum
            if msg.qos == 0 or has_room:
                group.cursor = (group.cursor + i + 1) % n
                self._enqueue(
                    session, Delivery(msg, min(msg.qos, group.members[client_id]), False, key)
                )
                return
        if len(group.backlog) >= self.config.max_queued_messages:
            self.stats.dropped_queue_full += 1
            return
        group.backlog.append(msg)

    def _enqueue(self, session: Session, delivery: Delivery) -> None:
        conn = session.conn
        if delivery.qos == 0:
            # QoS 0 is not kept for offline sessions, and passes the QoS 1 window (MQTT 4.9)
            # unless the client is not reading what it is already sent.
            if conn is not None and not conn.closing:
                if conn.buffered() > self.config.max_write_buffer:
                    self.stats.dropped_slow_reader += 1
                else:
                    self._transmit(session, conn, delivery, 0, dup=False)
            return
        if len(session.queue) >= self.config.max_queued_messages:
            self.stats.dropped_queue_full += 1
            return
        session.queue.append(delivery)
        self._pump(session)

    def _pull_shared(self, session: Session, window_free: bool) -> Delivery | None:
        for sub in session.subscriptions.values():
            if sub.group is None:
                continue
            key = sub.group_key
            group = self.groups.get(key)
            if group is None or not group.backlog:
                continue
            msg = group.backlog[0]
            if msg.qos and not window_free:
                continue
            group.backlog.popleft()
            return Delivery(msg, min(msg.qos, sub.qos), False, key)
        return None

    def _pump(self, session: Session) -> None:
        """Send what the session's window allows: its own queue first, then its groups'."""
        conn = session.conn
        if conn is None:
            return
        while not conn.closing:
            window_free = len(session.inflight) < conn.receive_maximum
            if session.queue:
                delivery = session.queue[0]
                if delivery.qos and not window_free:
                    return
                session.queue.popleft()
            else:
                pulled = self._pull_shared(session, window_free)
                if pulled is None:
                    return
                delivery = pulled
            if (
                delivery.message.expires_at is not None
                and delivery.message.expires_at <= self.clock()
            ):
                self.stats.dropped_expired += 1
                continue
            pid = session.allocate_id() if delivery.qos else 0
            self._transmit(session, conn, delivery, pid, dup=False)

    def _transmit(
        self, session: Session, conn: Connection, delivery: Delivery, pid: int, dup: bool
    ) -> None:
        msg = delivery.message
        props: Properties | None = None
        if conn.version == MQTT_5:
            props = dict(msg.properties)
            if msg.expires_at is not None:
                props[MESSAGE_EXPIRY_INTERVAL] = max(0, int(msg.expires_at - self.clock()))
        data = encode_publish(
            conn.version, msg.topic, msg.payload, delivery.qos, delivery.retain, dup, pid, props
        )
        if len(data) > conn.max_packet_size:
            self.stats.dropped_too_large += 1
            session.inflight.pop(pid, None)
            return
        if delivery.qos:
            session.inflight[pid] = delivery
        self.stats.messages_sent += 1
        conn.write(data)

    def _end_session(self, session: Session) -> None:
        """Forget a session; its shared-subscription messages go back to their groups."""
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        delayed = self.delayed_wills.pop(session.client_id, None)
        if delayed is not None:
            self._publish_delayed_will(session.client_id, delayed[1])
        for sub in session.subscriptions.values():
            if sub.group is not None:
                self._leave_group(session.client_id, sub)
        for delivery in [*session.inflight.values(), *session.queue]:
            if delivery.group is not None and delivery.message.qos:
                group = self.groups.get(delivery.group)
                if group is not None:
                    self._deliver_shared(delivery.group, group, delivery.message)
                else:
                    self.stats.dropped_no_subscriber += 1
        session.inflight.clear()
        session.queue.clear()
        session.subscriptions.clear()

    def _leave_group(self, client_id: str, sub: Subscription) -> None:
        key = sub.group_key
        group = self.groups.get(key)
        if group is None:
            return
        group.members.pop(client_id, None)
        if not group.members:
            del self.groups[key]
            if group.backlog:
                self.stats.dropped_no_subscriber += len(group.backlog)
                log.warning(
                    "shared subscription %s/%s lost its last member; dropped %d queued messages",
                    key[0],
                    key[1],
                    len(group.backlog),
                )

    # ---- SUBSCRIBE / UNSUBSCRIBE

    def _on_subscribe(self, conn: Connection, pkt: Subscribe) -> None:
        session = conn.session
        assert session is not None
        if SUBSCRIPTION_IDENTIFIER in pkt.properties:
            raise ProtocolError(
                SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED, "subscription identifiers are not supported"
            )
        v5 = conn.version == MQTT_5
        codes: list[int] = []
        wanting_retained: list[Subscription] = []
        for req in pkt.requests:
            try:
                group, flt = split_shared(req.filter)
                validate_topic_filter(flt)
            except ProtocolError as exc:
                log.warning("%r: subscription refused: %s", conn, exc)
                codes.append(exc.reason_code if v5 else V3_SUBSCRIBE_FAILURE)
                continue
            if group is not None and req.no_local:
                raise ProtocolError(PROTOCOL_ERROR, "No Local on a shared subscription")
            qos = min(req.qos, 1)
            sub = Subscription(
                req.filter, tuple(flt.split("/")), qos, req.no_local, req.retain_as_published, group
            )
            existed = req.filter in session.subscriptions
            session.subscriptions[req.filter] = sub
            if group is not None:
                key = sub.group_key
                self.groups.setdefault(key, SharedGroup(sub.levels)).members[session.client_id] = (
                    qos
                )
            elif req.retain_handling == 0 or (req.retain_handling == 1 and not existed):
                wanting_retained.append(sub)
            codes.append(qos)
        conn.write(encode_suback(conn.version, pkt.packet_id, codes))
        now = self.clock()
        for sub in wanting_retained:
            for topic, msg in list(self.retained.items()):
                if msg.expires_at is not None and msg.expires_at <= now:
                    del self.retained[topic]
                    continue
                if topic_matches(sub.levels, topic.split("/")):
                    self._enqueue(session, Delivery(msg, min(msg.qos, sub.qos), True, None))
        self._pump(session)

    def _on_unsubscribe(self, conn: Connection, pkt: Unsubscribe) -> None:
        session = conn.session
        assert session is not None
        codes: list[int] = []
        for flt in pkt.filters:
            sub = session.subscriptions.pop(flt, None)
            if sub is None:
                codes.append(NO_SUBSCRIPTION_EXISTED)
                continue
            if sub.group is not None:
                self._leave_group(session.client_id, sub)
            codes.append(SUCCESS)
        conn.write(encode_unsuback(conn.version, pkt.packet_id, codes))

    # ---- observation

    def _log_drops(self) -> None:
        s = self.stats
        dropped = (
            s.dropped_queue_full + s.dropped_too_large + s.dropped_expired + s.dropped_slow_reader
        )
        if dropped > self._drops_logged:
            log.warning(
                "dropped %d messages so far (queue full %d, too large for the client %d, "
                "expired %d, QoS 0 to a slow reader %d)",
                dropped,
                s.dropped_queue_full,
                s.dropped_too_large,
                s.dropped_expired,
                s.dropped_slow_reader,
            )
            self._drops_logged = dropped

    def metrics(self) -> dict[str, int]:
        """Counters and gauges, named for a /metrics page (``mqtt_broker_...``)."""
        out = {f"mqtt_broker_{k}": v for k, v in _asdict(self.stats).items()}
        out["mqtt_broker_connections_open"] = len(self.connections)
        out["mqtt_broker_sessions"] = len(self.sessions)
        out["mqtt_broker_retained_messages"] = len(self.retained)
        out["mqtt_broker_queued_messages"] = sum(
            len(s.queue) for s in self.sessions.values()
        ) + sum(len(g.backlog) for g in self.groups.values())
        out["mqtt_broker_inflight_messages"] = sum(len(s.inflight) for s in self.sessions.values())
        return out


def _asdict(stats: BrokerStats) -> dict[str, int]:
    return {name: getattr(stats, name) for name in BrokerStats.__dataclass_fields__}


# --------------------------------------------------------------------------- asyncio server


class _Protocol(asyncio.Protocol):
    """Connects one TCP transport to a :class:`Connection`."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.transport: asyncio.Transport | None = None
        self.conn: Connection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.conn = self.broker.core.open(
            self._write, transport.close, peer_text, transport.get_write_buffer_size
        )
        self.broker._transports.add(transport)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.conn is None:
            return
        try:
            self.conn.receive(data)
        except Exception:
            # A bug of ours must cost one connection, never the broker.
            log.exception("%r: internal error; closing its connection", self.conn)
            self.conn.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.broker.core.connection_lost(self.conn)
        if self.transport is not None:
            self.broker._transports.discard(self.transport)
            if not self.broker._transports:
                self.broker._all_closed.set()


class Broker:
    """The embedded broker on a TCP port, in the running event loop.

    ``await broker.serve(host, port, ready)`` runs until cancelled; or
    ``async with Broker() as broker:`` listens on ``broker.port`` inside the block.
    """

    SHUTDOWN_TIMEOUT = 3.0
    TICK_INTERVAL = 0.5

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, config: BrokerConfig | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.core = BrokerCore(config)
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._transports: set[asyncio.Transport] = set()
        self._all_closed = asyncio.Event()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def metrics(self) -> dict[str, int]:
        return self.core.metrics()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Protocol(self), self.host, self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._ticker = asyncio.create_task(self._tick(), name="mqtt-broker-tick")
        log.info("embedded MQTT broker listening on %s", self.url)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.TICK_INTERVAL)
            self.core.tick()

    async def stop(self) -> None:
        """Stop listening, disconnect every client (bounded), stop the timer."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        self._all_closed.clear()
        self.core.shutdown()
        if self._transports:
            try:
                async with asyncio.timeout(self.SHUTDOWN_TIMEOUT):
                    await self._all_closed.wait()
            except TimeoutError:
                for transport in list(self._transports):
                    transport.abort()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.SHUTDOWN_TIMEOUT):
                await server.wait_closed()
        log.info("embedded MQTT broker stopped")

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def serve(
        self,
        host: str | None = None,
        port: int | None = None,
        ready: asyncio.Event | None = None,
    ) -> None:
        """Listen (by default on this broker's host and port) until cancelled."""
        if host is not None:
            self.host = host
        if port is not None:
            self.port = port
        await self.start()
        try:
            if ready is not None:
                ready.set()
            await asyncio.Event().wait()
        finally:
            await asyncio.shield(self.stop())
