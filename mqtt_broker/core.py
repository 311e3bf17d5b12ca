"""The broker's state and rules without I/O: :class:`BrokerCore`."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from mqtt_broker.codec import (
    PINGRESP_BYTES,
    encode_ack,
    encode_connack,
    encode_disconnect,
    encode_suback,
    encode_unsuback,
)
from mqtt_broker.constants import (
    _VARINT_MAX,
    ASSIGNED_CLIENT_IDENTIFIER,
    AUTHENTICATION_METHOD,
    BAD_AUTHENTICATION_METHOD,
    CLIENT_ID_NOT_VALID,
    CONNECT,
    DISCONNECT_WITH_WILL,
    KEEP_ALIVE_TIMEOUT,
    MAXIMUM_PACKET_SIZE,
    MQTT_5,
    MQTT_311,
    NEVER_EXPIRES,
    NO_SUBSCRIPTION_EXISTED,
    PROTOCOL_ERROR,
    PUBACK,
    PUBCOMP,
    PUBREC,
    PUBREL,
    REASON_STRING,
    RECEIVE_MAXIMUM,
    RETAIN_AVAILABLE,
    SERVER_SHUTTING_DOWN,
    SESSION_EXPIRY_INTERVAL,
    SESSION_TAKEN_OVER,
    SHARED_SUBSCRIPTION_AVAILABLE,
    SUBSCRIPTION_IDENTIFIER,
    SUBSCRIPTION_IDENTIFIER_AVAILABLE,
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
    SUCCESS,
    TOPIC_ALIAS,
    TOPIC_ALIAS_INVALID,
    TOPIC_ALIAS_MAXIMUM,
    UNSUPPORTED_PROTOCOL_VERSION,
    V3_IDENTIFIER_REJECTED,
    V3_SUBSCRIBE_FAILURE,
    V3_UNACCEPTABLE_PROTOCOL_VERSION,
    WILDCARD_SUBSCRIPTION_AVAILABLE,
    WILL_DELAY_INTERVAL,
    Properties,
    ProtocolError,
)
from mqtt_broker.packets import (
    Ack,
    Disconnect,
    PingReq,
    Publish,
    Subscribe,
    Unsubscribe,
    decode_connect,
    decode_packet,
    sniff_version,
)
from mqtt_broker.router import Router
from mqtt_broker.session import (
    BrokerConfig,
    BrokerStats,
    Connection,
    Delivery,
    Message,
    Session,
    SharedGroup,
    Subscription,
)
from mqtt_broker.topics import (
    split_shared,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)

log = logging.getLogger("mqtt_broker")


class BrokerCore(Router):
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
