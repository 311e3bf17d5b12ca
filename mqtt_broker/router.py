"""Routing of application messages: retained messages, Wills, shared groups, delivery
windows and session ends (a mixin of :class:`mqtt_broker.core.BrokerCore`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from mqtt_broker.codec import encode_publish
from mqtt_broker.constants import (
    FORWARDED,
    MESSAGE_EXPIRY_INTERVAL,
    MQTT_5,
    Properties,
)
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
from mqtt_broker.topics import topic_matches

log = logging.getLogger("mqtt_broker")


class Router:
    """Message routing; state and hooks are :class:`BrokerCore`'s."""

    config: BrokerConfig
    clock: Callable[[], float]
    stats: BrokerStats
    sessions: dict[str, Session]
    groups: dict[tuple[str, str], SharedGroup]
    retained: dict[str, Message]
    #: client id -> (when, Will) of Wills waiting out their Will Delay Interval
    delayed_wills: dict[str, tuple[float, Message]]

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
        kept = {k: v for k, v in props.items() if k in FORWARDED}
        return Message(
            topic, payload, qos, retain, kept, now + expiry if expiry is not None else None, sender
        )

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
