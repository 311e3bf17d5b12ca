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
persistence to disk.

Layout (each module a layer, sans-I/O except the server):

* :mod:`.constants` -- packet types, reason codes, property identifiers, :class:`ProtocolError`;
* :mod:`.codec` -- variable integers, properties, :class:`PacketFramer`, the ``encode_*``;
* :mod:`.packets` -- the decoded packets and ``decode_connect``/``decode_packet``;
* :mod:`.topics` -- topic and filter rules, shared subscriptions, matching;
* :mod:`.session` -- :class:`BrokerConfig`, messages, sessions, :class:`Connection`;
* :mod:`.router` -- routing, retained messages, Wills, shared groups, delivery windows;
* :mod:`.core` -- :class:`BrokerCore`: CONNECT, PUBLISH, SUBSCRIBE rules, expiry, metrics;
* :mod:`.server` -- :class:`Broker`, the asyncio TCP server.

:mod:`.broker` re-exports :class:`Broker`, :class:`BrokerConfig` and :class:`BrokerCore`.
"""

from mqtt_broker.broker import Broker, BrokerConfig, BrokerCore

__all__ = ["Broker", "BrokerConfig", "BrokerCore"]
