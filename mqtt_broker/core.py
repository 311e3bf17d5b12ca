"""The broker's state and rules without I/O: :class:`BrokerCore`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from mqtt_broker.codec import (
    PINGRESP_BYTES,
    encode_ack,
    encode_suback,
    encode_unsuback,
)
from mqtt_broker.connect import Connector
from mqtt_broker.constants import (
    KEEP_ALIVE_TIMEOUT,
    MQTT_5,
    NEVER_EXPIRES,
    NO_SUBSCRIPTION_EXISTED,
    NOT_AUTHORIZED,
    PROTOCOL_ERROR,
    PUBACK,
    PUBCOMP,
    PUBREC,
    PUBREL,
    SERVER_SHUTTING_DOWN,
    SUBSCRIPTION_IDENTIFIER,
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
    SUCCESS,
    TOPIC_ALIAS,
    TOPIC_ALIAS_INVALID,
    V3_SUBSCRIBE_FAILURE,
    ProtocolError,
)
from mqtt_broker.packets import (
    Ack,
    PingReq,
    Publish,
    Subscribe,
    Unsubscribe,
    decode_packet,
)
from mqtt_broker.session import (
    BrokerConfig,
    BrokerStats,
    Connection,
    Delivery,
    Message,
    SharedGroup,
    Subscription,
    WarningThrottle,
)
from mqtt_broker.topics import (
    split_shared,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)

log = logging.getLogger("mqtt_broker")


class BrokerCore(Connector):
    """The broker's state and rules, without I/O or an event loop."""

    def __init__(
        self, config: BrokerConfig | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config or BrokerConfig()
        self.clock = clock
        self.stats = BrokerStats()
        # typed where the routing declares them (Router)
        self.sessions = {}
        self.groups = {}
        self.retained = {}
        self.connections: set[Connection] = set()
        self.delayed_wills = {}
        self._drops_logged = 0
        self.warnings = WarningThrottle(clock, self.config.warning_interval)

    # ---- connections

    def open(
        self,
        send: Callable[[bytes], None],
        close: Callable[[], None],
        peer: str,
        buffered: Callable[[], int] | None = None,
    ) -> Connection:
        conn = Connection(self, send, close, peer, buffered)
        self.stats.connections_total += 1
        if len(self.connections) >= self.config.max_connections:
            self.stats.connections_refused += 1
            self.warnings.warn(
                f"connection from {peer} refused: {self.config.max_connections} already open"
            )
            conn.close()
            return conn
        self.connections.add(conn)
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
                self.warnings.warn(f"{conn!r}: keep-alive timeout; closing its connection")
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
        self.warnings.flush()

    def shutdown(self) -> None:
        """Tell every client the server is going away and close every connection."""
        for conn in list(self.connections):
            conn.will = None
            self.disconnect(conn, SERVER_SHUTTING_DOWN, "server shutting down")
        self.delayed_wills.clear()
        self._log_drops()

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
        allowed = conn.user is None or conn.user.may_publish(pkt.topic)
        if not allowed:
            # as Mosquitto: v5 learns "not authorized", 3.1.1 gets its normal ack (the
            # protocol has no refusal) and the message is dropped either way
            self.stats.not_authorized += 1
            self.warnings.warn(f"{conn!r} may not publish on {pkt.topic!r}: dropped")
        reason = SUCCESS if allowed or conn.version != MQTT_5 else NOT_AUTHORIZED
        if pkt.qos == 2:
            duplicate = pkt.packet_id in session.inbound_qos2
            if reason == SUCCESS:
                session.inbound_qos2.add(pkt.packet_id)
            if allowed and not duplicate:
                self.publish_message(self._message_of(conn, pkt))
            conn.write(encode_ack(PUBREC, conn.version, pkt.packet_id, reason))
            return
        if allowed:
            self.publish_message(self._message_of(conn, pkt))
        if pkt.qos == 1:
            conn.write(encode_ack(PUBACK, conn.version, pkt.packet_id, reason))

    def _message_of(self, conn: Connection, pkt: Publish) -> Message:
        return self._message(
            pkt.topic,
            pkt.payload,
            pkt.qos,
            pkt.retain,
            pkt.properties,
            conn.client_id or "",
            self.clock(),
        )

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
                self.warnings.warn(f"{conn!r}: subscription refused: {exc}")
                codes.append(exc.reason_code if v5 else V3_SUBSCRIBE_FAILURE)
                continue
            if conn.user is not None and not conn.user.may_subscribe(req.filter):
                self.stats.not_authorized += 1
                self.warnings.warn(f"{conn!r} may not subscribe to {req.filter!r}")
                codes.append(NOT_AUTHORIZED if v5 else V3_SUBSCRIBE_FAILURE)
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
