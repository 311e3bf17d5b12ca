"""CONNECT, authentication, session attach and takeover, DISCONNECT (a layer of
:class:`mqtt_broker.core.BrokerCore`)."""

from __future__ import annotations

import logging
import uuid

from mqtt_broker.codec import encode_connack, encode_disconnect
from mqtt_broker.constants import (
    ASSIGNED_CLIENT_IDENTIFIER,
    AUTHENTICATION_METHOD,
    BAD_AUTHENTICATION_METHOD,
    BAD_USER_NAME_OR_PASSWORD,
    CLIENT_ID_NOT_VALID,
    CONNECT,
    DISCONNECT_WITH_WILL,
    MAXIMUM_PACKET_SIZE,
    MQTT_5,
    MQTT_311,
    NEVER_EXPIRES,
    NOT_AUTHORIZED,
    PROTOCOL_ERROR,
    REASON_STRING,
    RECEIVE_MAXIMUM,
    RETAIN_AVAILABLE,
    SESSION_EXPIRY_INTERVAL,
    SESSION_TAKEN_OVER,
    SHARED_SUBSCRIPTION_AVAILABLE,
    SUBSCRIPTION_IDENTIFIER_AVAILABLE,
    SUCCESS,
    TOPIC_ALIAS_MAXIMUM,
    UNSUPPORTED_PROTOCOL_VERSION,
    V3_BAD_USER_NAME_OR_PASSWORD,
    V3_IDENTIFIER_REJECTED,
    V3_NOT_AUTHORIZED,
    V3_UNACCEPTABLE_PROTOCOL_VERSION,
    VARINT_MAX,
    WILDCARD_SUBSCRIPTION_AVAILABLE,
    WILL_DELAY_INTERVAL,
    Properties,
    ProtocolError,
)
from mqtt_broker.packets import Connect, Disconnect, decode_connect, sniff_version
from mqtt_broker.router import Router
from mqtt_broker.session import Connection, Session, WarningThrottle
from mqtt_broker.topics import validate_topic_name

log = logging.getLogger("mqtt_broker")


class _Refused(Exception):
    """A CONNECT the broker refuses: v5 reason code, 3.1.1 return code (or none), why."""

    def __init__(self, v5_code: int, v3_code: int | None, text: str) -> None:
        super().__init__(text)
        self.v5_code = v5_code
        self.v3_code = v3_code


class Connector(Router):
    """The connection side of the broker: CONNECT to CONNACK, takeover, DISCONNECT."""

    warnings: WarningThrottle

    def protocol_error(self, conn: Connection, exc: ProtocolError) -> None:
        self.stats.protocol_errors += 1
        self.warnings.warn(f"{conn!r} broke the MQTT protocol: {exc}; closing its connection")
        if conn.version == MQTT_5:
            conn.write(encode_disconnect(exc.reason_code, str(exc)))
        conn.close()

    def disconnect(self, conn: Connection, reason: int, text: str) -> None:
        """Close ``conn`` from the broker's side (v5: with a DISCONNECT first)."""
        if conn.version == MQTT_5:
            conn.write(encode_disconnect(reason, text))
        conn.close()

    def _on_connect(self, conn: Connection, first: int, body: bytes) -> None:
        if first >> 4 != CONNECT:
            raise ProtocolError(PROTOCOL_ERROR, "the first packet must be CONNECT")
        version = sniff_version(body)
        try:
            pkt = decode_connect(first & 0x0F, body)
        except ProtocolError as exc:
            self.stats.protocol_errors += 1
            self.warnings.warn(f"{conn!r} sent a bad CONNECT: {exc}")
            if version == MQTT_5:
                conn.write(
                    encode_connack(MQTT_5, False, exc.reason_code, {REASON_STRING: str(exc)})
                )
            elif exc.reason_code == UNSUPPORTED_PROTOCOL_VERSION:
                conn.write(encode_connack(MQTT_311, False, V3_UNACCEPTABLE_PROTOCOL_VERSION))
            conn.close()
            return
        try:
            self._check_connect(pkt)
            self._authenticate(conn, pkt)
            client_id, assigned = self._client_id(pkt)
            self._check_owner(conn, client_id)
        except _Refused as refused:
            self._refuse(conn, pkt.version, refused)
            return
        self._accept(conn, pkt, client_id, assigned)

    def _refuse(self, conn: Connection, version: int, refused: _Refused) -> None:
        self.warnings.warn(f"{conn!r}: CONNECT refused: {refused}")
        if version == MQTT_5:
            props = {REASON_STRING: str(refused)}
            conn.write(encode_connack(MQTT_5, False, refused.v5_code, props))
        elif refused.v3_code is not None:
            conn.write(encode_connack(MQTT_311, False, refused.v3_code))
        conn.close()

    def _check_connect(self, pkt: Connect) -> None:
        props = pkt.properties
        if AUTHENTICATION_METHOD in props:
            self.stats.protocol_errors += 1
            raise _Refused(BAD_AUTHENTICATION_METHOD, None, "enhanced authentication unsupported")
        if props.get(RECEIVE_MAXIMUM) == 0 or props.get(MAXIMUM_PACKET_SIZE) == 0:
            self.stats.protocol_errors += 1
            raise _Refused(PROTOCOL_ERROR, None, "Receive Maximum and Maximum Packet Size are 0")
        if pkt.will is not None:
            try:
                validate_topic_name(pkt.will.topic)
            except ProtocolError as exc:
                self.stats.protocol_errors += 1
                raise _Refused(exc.reason_code, None, f"Will: {exc}") from None

    def _authenticate(self, conn: Connection, pkt: Connect) -> None:
        """With users configured: a known user name and its password, and a Will the user
        may publish; the user is bound to ``conn``."""
        users = self.config.users
        if not users:
            return
        if pkt.username is None:
            self.stats.auth_failures += 1
            raise _Refused(NOT_AUTHORIZED, V3_NOT_AUTHORIZED, "anonymous clients are refused")
        user = users.get(pkt.username)
        if user is None or pkt.password is None or not user.verify(pkt.password):
            self.stats.auth_failures += 1
            raise _Refused(
                BAD_USER_NAME_OR_PASSWORD,
                V3_BAD_USER_NAME_OR_PASSWORD,
                f"bad user name or password for {pkt.username!r}",
            )
        if pkt.will is not None and not user.may_publish(pkt.will.topic):
            self.stats.not_authorized += 1
            raise _Refused(NOT_AUTHORIZED, V3_NOT_AUTHORIZED, f"Will on {pkt.will.topic!r}")
        conn.user = user

    def _client_id(self, pkt: Connect) -> tuple[str, str | None]:
        """The client id, and the one the broker assigned (empty id), if any."""
        if pkt.client_id:
            return pkt.client_id, None
        if pkt.version != MQTT_5 and not pkt.clean_start:
            self.stats.protocol_errors += 1
            raise _Refused(
                CLIENT_ID_NOT_VALID, V3_IDENTIFIER_REJECTED, "empty client id needs a clean session"
            )
        assigned = "auto-" + uuid.uuid4().hex
        return assigned, assigned

    def _check_owner(self, conn: Connection, client_id: str) -> None:
        """A client id belongs to the user that holds its session: no takeover by another."""
        session = self.sessions.get(client_id)
        if conn.user is None or session is None or session.owner in (None, conn.user.name):
            return
        self.stats.not_authorized += 1
        raise _Refused(
            NOT_AUTHORIZED,
            V3_NOT_AUTHORIZED,
            f"client id {client_id!r} belongs to another user than {conn.user.name!r}",
        )

    def _accept(self, conn: Connection, pkt: Connect, client_id: str, assigned: str | None) -> None:
        v5 = pkt.version == MQTT_5
        props = pkt.properties
        now = self.clock()
        conn.version = pkt.version
        conn.client_id = client_id
        conn.keepalive = pkt.keepalive
        conn.deadline = now + pkt.keepalive * 1.5 if pkt.keepalive else None
        if v5:
            conn.receive_maximum = props.get(RECEIVE_MAXIMUM, 65535)
            conn.max_packet_size = props.get(MAXIMUM_PACKET_SIZE, VARINT_MAX)
            expiry = props.get(SESSION_EXPIRY_INTERVAL, 0)
        else:
            expiry = 0 if pkt.clean_start else NEVER_EXPIRES
        if pkt.will is not None:
            w = pkt.will
            conn.will = self._message(
                w.topic, w.payload, w.qos, w.retain, w.properties, client_id, now
            )
            conn.will_delay = w.properties.get(WILL_DELAY_INTERVAL, 0)
        session, present = self._attach(conn, pkt, client_id, expiry)
        log.debug(
            "%r connected (MQTT %s, session %s, expiry %s)",
            conn,
            "5.0" if v5 else "3.1.1",
            "resumed" if present else "new",
            expiry,
        )
        conn.write(encode_connack(pkt.version, present, SUCCESS, self._connack_props(v5, assigned)))
        for pid, delivery in list(session.inflight.items()):
            self.stats.redelivered += 1
            self._transmit(session, conn, delivery, pid, dup=True)
        self._pump(session)

    def _attach(
        self, conn: Connection, pkt: Connect, client_id: str, expiry: int
    ) -> tuple[Session, bool]:
        """Take over, resume or start the session of ``client_id``; (session, was present)."""
        now = self.clock()
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
            session = Session(client_id, expiry, conn.user.name if conn.user else None)
            self.sessions[client_id] = session
        session.expiry = expiry
        session.expires_at = None
        session.conn = conn
        conn.session = session
        return session, present

    def _connack_props(self, v5: bool, assigned: str | None) -> Properties:
        if not v5:
            return {}
        props: Properties = {
            RETAIN_AVAILABLE: 1,
            MAXIMUM_PACKET_SIZE: self.config.max_packet_size,
            TOPIC_ALIAS_MAXIMUM: 0,
            WILDCARD_SUBSCRIPTION_AVAILABLE: 1,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE: 0,
            SHARED_SUBSCRIPTION_AVAILABLE: 1,
        }
        if assigned:
            props[ASSIGNED_CLIENT_IDENTIFIER] = assigned
        return props

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
