"""The broker's configuration, messages, sessions, statistics and sans-I/O connections."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mqtt_broker.codec import PacketFramer
from mqtt_broker.constants import (
    VARINT_MAX,
    Properties,
    ProtocolError,
)

if TYPE_CHECKING:
    from mqtt_broker.auth import User
    from mqtt_broker.core import BrokerCore

log = logging.getLogger("mqtt_broker")

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
    #: user name -> :class:`~mqtt_broker.auth.User`; when not empty, anonymous clients are
    #: refused and every publish and subscription is checked against the user's ACL.
    users: Mapping[str, User] = field(default_factory=dict, hash=False)
    #: open connections at most; more are closed at once (counted).
    max_connections: int = 1000
    #: seconds between summary lines of repeated warnings (bad packets, refusals).
    warning_interval: float = 60.0


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
        "owner",
        "queue",
        "subscriptions",
    )

    def __init__(self, client_id: str, expiry: int, owner: str | None = None) -> None:
        self.client_id = client_id
        #: the user the client id belongs to (``None``: no users configured)
        self.owner = owner
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
    auth_failures: int = 0
    not_authorized: int = 0
    connections_refused: int = 0


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
        "user",
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
        self.user: User | None = None
        self.will: Message | None = None
        self.will_delay = 0
        self.keepalive = 0
        self.deadline: float | None = core.clock() + core.config.connect_timeout
        self.receive_maximum = core.config.default_receive_maximum
        self.max_packet_size = VARINT_MAX
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


class WarningThrottle:
    """Repeated warnings as one line per interval: the first at once, then a summary of what
    came since (how many, and the last one)."""

    def __init__(self, clock: Callable[[], float], interval: float) -> None:
        self.clock = clock
        self.interval = interval
        self._last_logged: float | None = None
        self._pending = 0
        self._last_text = ""

    def warn(self, text: str) -> None:
        now = self.clock()
        if self._last_logged is None or now - self._last_logged >= self.interval:
            self._emit(now)
            log.warning("%s", text)
            self._last_logged = now
            return
        self._pending += 1
        self._last_text = text

    def flush(self) -> None:
        """Log the summary if one is due (called from the broker's tick)."""
        now = self.clock()
        if self._pending and (
            self._last_logged is None or now - self._last_logged >= self.interval
        ):
            self._emit(now)
            self._last_logged = now

    def _emit(self, now: float) -> None:
        if self._pending:
            since = now - (self._last_logged or now)
            log.warning(
                "%d more client problems in the last %.0f s; the last: %s",
                self._pending,
                since,
                self._last_text,
            )
            self._pending = 0
