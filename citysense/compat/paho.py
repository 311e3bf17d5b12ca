"""paho-mqtt (2.x): buffered reads, a lean PUBLISH path and batched PUBACKs for the ingestor.

paho reads a packet's fixed header one byte per ``recv()`` and builds an MQTT v5
``Properties`` object for every PUBLISH. :class:`BufferedClient` serves paho's reads from a
buffer filled by large ``recv()`` calls and decodes a plain PUBLISH (QoS 0/1, no properties)
itself; its ``loop_read`` processes every buffered packet before paho waits in ``select()``
again, so a buffered byte is never left waiting for the socket to become readable.
:func:`ack_many` queues all PUBACKs of one write as one buffer.

Internals used (checked at import, :data:`MISSING` lists what is not there):
``Client._sock_recv``, ``Client._sock_close``, ``Client._handle_publish``,
``Client.loop_read`` (overridden), ``Client._in_packet``, ``Client._protocol``,
``Client._sock`` (read), ``Client._ssl`` (read; a TLS socket is read record after record
until none is ready), ``Client._packet_queue`` (called). When any of the first group is
missing, :func:`consumer_client_class` gives plain ``mqtt.Client`` (paho's own reads and
``on_message``); without ``_packet_queue`` :func:`ack_many` uses the public ``Client.ack``.

Acknowledging from another thread is safe: ``client.ack`` and ``_packet_queue`` append to a
deque and wake paho's loop through its socket pair.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

PUBACK = 0x40
_PUBACK = struct.Struct("!BBH")
_PUBLISH = 0x30
_U16 = struct.Struct("!H")
#: Bytes asked of the socket per ``recv()`` (a burst of PUBLISH packets at once).
RECV_SIZE = 256 * 1024

#: ``(topic, payload, mid, qos)`` of one PUBLISH, called on paho's thread.
PublishHandler = Callable[[str, bytes, int, int], None]

_METHODS = ("_sock_recv", "_sock_close", "_handle_publish", "loop_read")
_ATTRIBUTES = ("_in_packet", "_protocol", "_sock")


def _missing() -> tuple[str, ...]:
    probe = mqtt.Client(CallbackAPIVersion.VERSION2)
    gone = [name for name in _METHODS if not callable(getattr(mqtt.Client, name, None))]
    gone += [name for name in _ATTRIBUTES if not hasattr(probe, name)]
    if not callable(getattr(probe, "_packet_queue", None)):
        gone.append("_packet_queue")
    return tuple(gone)


#: paho internals this module needs and this paho lacks (empty: every workaround is on).
MISSING: tuple[str, ...] = _missing()
#: Buffered reads and the lean PUBLISH path are usable.
BUFFERED_READS: bool = not any(name in MISSING for name in (*_METHODS, *_ATTRIBUTES))


class BufferedClient(mqtt.Client):
    """paho's client with buffered reads and a lean PUBLISH path (see the module doc).

    Invariants: ``_sock_recv`` returns at most ``bufsize`` bytes, as ``recv()`` does, and
    reads the socket only when the buffer is empty; ``loop_read`` returns with the buffer
    empty (or the connection gone), so paho's ``select()`` never waits on bytes already
    read; the buffer is dropped with its socket (no byte crosses into a new connection).
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._rbuf = b""
        self._rpos = 0
        #: Called for a plain PUBLISH instead of building an MQTTMessage (None: paho's path).
        self.on_publish_fast: PublishHandler | None = None
        #: Called on paho's thread after each read burst.
        self.after_read: Callable[[], None] | None = None

    def _sock_recv(self, bufsize: int) -> bytes:
        buf = self._rbuf
        pos = self._rpos
        if pos >= len(buf):
            data = super()._sock_recv(max(bufsize, RECV_SIZE))
            if getattr(self, "_ssl", False) and data:
                data = self._more_records(data)
            if len(data) <= bufsize:
                self._rbuf, self._rpos = b"", 0
                return data
            self._rbuf, self._rpos = data, bufsize
            return data[:bufsize]
        end = pos + bufsize
        self._rpos = end
        return buf[pos:end]

    def _more_records(self, data: bytes) -> bytes:
        """A TLS socket's ``recv()`` returns one record (16 KiB at most): read on while
        records are ready, so that a burst is one buffer (one wake-up) as on plain TCP."""
        parts = [data]
        size = len(data)
        while size < RECV_SIZE:
            try:
                more = super()._sock_recv(RECV_SIZE - size)
            except OSError:  # nothing ready yet (or an error the next read reports again)
                break
            if not more:
                break
            parts.append(more)
            size += len(more)
        return b"".join(parts)

    def _buffered(self) -> bool:
        return self._rpos < len(self._rbuf)

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        try:
            rc = super().loop_read(max_packets)
            while rc == mqtt.MQTT_ERR_SUCCESS and self._sock is not None and self._buffered():
                rc = super().loop_read(max_packets)
            return rc
        finally:
            if self.after_read is not None:
                self.after_read()

    def _sock_close(self) -> None:
        self._rbuf, self._rpos = b"", 0
        super()._sock_close()

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        handler = self.on_publish_fast
        command = self._in_packet["command"]
        qos = (command & 0x06) >> 1
        if handler is None or qos > 1 or command & 0xF0 != _PUBLISH:
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        try:
            (topic_len,) = _U16.unpack_from(packet, 0)
            pos = 2 + topic_len
            topic = packet[2:pos].decode()
            mid = 0
            if qos:
                (mid,) = _U16.unpack_from(packet, pos)
                pos += 2
            if self._protocol == mqtt.MQTTv5:
                if packet[pos] != 0:  # properties present: paho decodes them
                    return super()._handle_publish()
                pos += 1
        except (struct.error, IndexError, UnicodeDecodeError):
            return super()._handle_publish()  # paho names what is wrong
        if pos > len(packet):
            return super()._handle_publish()
        handler(topic, bytes(packet[pos:]), mid, qos)
        return mqtt.MQTT_ERR_SUCCESS


def consumer_client_class() -> type[mqtt.Client]:
    """:class:`BufferedClient` where paho has its internals, else plain ``mqtt.Client``."""
    return BufferedClient if BUFFERED_READS else mqtt.Client


def ack_many(client: mqtt.Client, mids: Sequence[int]) -> None:
    """Send a PUBACK (reason success) for each of ``mids`` (QoS 1 messages).

    All of them as one buffer through paho's ``_packet_queue``: the public ``client.ack()``
    queues one packet per message and wakes paho's thread through a socket pair for each,
    which at one reading per message costs more than the messages themselves. A PUBACK with
    reason "success" is the same 4 bytes in MQTT 3.1.1 and 5.
    """
    queue = getattr(client, "_packet_queue", None)
    if callable(queue) and len(mids) > 1:
        queue(PUBACK, b"".join([_PUBACK.pack(PUBACK, 2, mid) for mid in mids]), 0, 0)
    else:
        for mid in mids:
            client.ack(mid, 1)
