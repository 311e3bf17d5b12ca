"""Decoded MQTT packets and their decoders (3.1.1 and 5.0)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from mqtt_broker.codec import Reader
from mqtt_broker.constants import (
    ACK_PROPS,
    AUTH,
    CONNECT,
    CONNECT_PROPS,
    DISCONNECT,
    DISCONNECT_PROPS,
    MALFORMED_PACKET,
    MQTT_5,
    MQTT_311,
    PINGREQ,
    PROTOCOL_ERROR,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBLISH_PROPS,
    PUBREC,
    PUBREL,
    SUBSCRIBE,
    SUBSCRIBE_PROPS,
    SUCCESS,
    UNSUBSCRIBE,
    UNSUBSCRIBE_PROPS,
    UNSUPPORTED_PROTOCOL_VERSION,
    WILL_PROPS,
    Properties,
    ProtocolError,
)

log = logging.getLogger("mqtt_broker")


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
    r = Reader(body)
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
    props = r.properties(CONNECT_PROPS, "CONNECT") if level == MQTT_5 else {}
    client_id = r.utf8()
    will = None
    if will_flag:
        will_props = r.properties(WILL_PROPS, "Will") if level == MQTT_5 else {}
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
    r = Reader(body)
    if kind == PUBLISH:
        return _decode_publish(r, flags, v5)
    expected_flags = 0x02 if kind in (PUBREL, SUBSCRIBE, UNSUBSCRIBE) else 0
    if flags != expected_flags:
        raise ProtocolError(MALFORMED_PACKET, f"packet type {kind} with bad fixed header flags")
    if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        return _decode_ack(r, kind, v5)
    if kind == SUBSCRIBE:
        return _decode_subscribe(r, v5)
    if kind == UNSUBSCRIBE:
        return _decode_unsubscribe(r, v5)
    if kind == PINGREQ:
        if body:
            raise ProtocolError(MALFORMED_PACKET, "PINGREQ with a body")
        return PingReq()
    if kind == DISCONNECT:
        return _decode_disconnect(r, v5)
    if kind == CONNECT:
        raise ProtocolError(PROTOCOL_ERROR, "second CONNECT on one connection")
    if kind == AUTH:
        raise ProtocolError(PROTOCOL_ERROR, "AUTH without an authentication method")
    raise ProtocolError(PROTOCOL_ERROR, f"packet type {kind} may not be sent by a client")


def _decode_publish(r: Reader, flags: int, v5: bool) -> Publish:
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
    props = r.properties(PUBLISH_PROPS, "PUBLISH") if v5 else {}
    return Publish(topic, r.rest(), qos, bool(flags & 0x01), dup, packet_id, props)


def _decode_ack(r: Reader, kind: int, v5: bool) -> Ack:
    packet_id = r.u16()
    reason = SUCCESS
    if v5 and not r.at_end():
        reason = r.byte()
        if not r.at_end():
            r.properties(ACK_PROPS, "acknowledgement")
    if not r.at_end():
        raise ProtocolError(MALFORMED_PACKET, "extra bytes after an acknowledgement")
    return Ack(kind, packet_id, reason)


def _decode_subscribe(r: Reader, v5: bool) -> Subscribe:
    packet_id = r.u16()
    if packet_id == 0:
        raise ProtocolError(MALFORMED_PACKET, "SUBSCRIBE with packet identifier 0")
    props = r.properties(SUBSCRIBE_PROPS, "SUBSCRIBE") if v5 else {}
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


def _decode_unsubscribe(r: Reader, v5: bool) -> Unsubscribe:
    packet_id = r.u16()
    if packet_id == 0:
        raise ProtocolError(MALFORMED_PACKET, "UNSUBSCRIBE with packet identifier 0")
    if v5:
        r.properties(UNSUBSCRIBE_PROPS, "UNSUBSCRIBE")
    filters: list[str] = []
    while not r.at_end():
        filters.append(r.utf8())
    if not filters:
        raise ProtocolError(PROTOCOL_ERROR, "UNSUBSCRIBE without a topic filter")
    return Unsubscribe(packet_id, tuple(filters))


def _decode_disconnect(r: Reader, v5: bool) -> Disconnect:
    reason = SUCCESS
    props: Properties = {}
    if v5 and not r.at_end():
        reason = r.byte()
        if not r.at_end():
            props = r.properties(DISCONNECT_PROPS, "DISCONNECT")
    if not r.at_end():
        raise ProtocolError(MALFORMED_PACKET, "extra bytes after DISCONNECT")
    return Disconnect(reason, props)
