"""aiocoap (0.4.x): the gateway's transport tuning, its UDP sockets, a lean request path.

Public API first: the tuning is a :class:`aiocoap.TransportTuning` subclass (aiocoap's
documented ``transport_tuning`` of a message), never a change of the class's attributes for
the whole process. Internals used, each checked here at import and at use:

* ``Context.request_interfaces[i].token_interface`` (the message manager), its
  ``dispatch_message`` and its ``message_interface.transport``: an incoming message is created
  by aiocoap
  with the default tuning, so :func:`tune_incoming` gives each one the gateway's tuning as it
  enters the message layer; the UDP sockets (for a larger receive buffer) hang off the same
  objects. Missing: aiocoap's default tuning and the kernel's buffer, logged at start.
* ``Context._render_to_pipe``, ``aiocoap.pipe.run_driving_pipe`` and ``error_to_message``:
  :class:`LeanContext` renders a request without formatting it into a task name. Missing:
  :data:`ServerContext` is plain ``aiocoap.Context``.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import aiocoap
import aiocoap.pipe
from aiocoap.numbers.constants import TransportTuning

log = logging.getLogger(__name__)


class GatewayTuning(TransportTuning):
    """aiocoap's tuning with the gateway's piggyback window and deduplication window."""

    def __init__(self, empty_ack_delay: float, exchange_lifetime: float) -> None:
        self._empty_ack_delay = empty_ack_delay
        self._exchange_lifetime = exchange_lifetime

    # aiocoap reads both as attributes (EXCHANGE_LIFETIME is a property there)
    @property
    def EMPTY_ACK_DELAY(self) -> float:
        return self._empty_ack_delay

    @property
    def EXCHANGE_LIFETIME(self) -> float:
        return self._exchange_lifetime


def _message_managers(context: aiocoap.Context) -> Iterator[Any]:
    for tokenman in getattr(context, "request_interfaces", None) or []:
        msgman = getattr(tokenman, "token_interface", None)
        if msgman is not None:
            yield msgman


def tune_incoming(context: aiocoap.Context, tuning: TransportTuning) -> int:
    """Give every message entering ``context``'s message layers ``tuning``; returns how many
    message layers were tuned (0: aiocoap's internals differ, its defaults apply)."""
    tuned = 0
    for msgman in _message_managers(context):
        dispatch: Callable[[aiocoap.Message], object] | None = getattr(
            msgman, "dispatch_message", None
        )
        if not callable(dispatch):
            continue

        def tuned_dispatch(
            message: aiocoap.Message, _dispatch: Callable[[aiocoap.Message], object] = dispatch
        ) -> object:
            message.transport_tuning = tuning
            return _dispatch(message)

        msgman.dispatch_message = tuned_dispatch
        tuned += 1
    return tuned


def udp_sockets(context: aiocoap.Context) -> list[socket.socket]:
    """The UDP sockets ``context`` serves on (empty if aiocoap's internals differ)."""
    found: list[socket.socket] = []
    for msgman in _message_managers(context):
        transport = getattr(getattr(msgman, "message_interface", None), "transport", None)
        get_extra = getattr(transport, "get_extra_info", None)
        sock = get_extra("socket") if callable(get_extra) else None
        if isinstance(sock, socket.socket) and sock.type == socket.SOCK_DGRAM:
            found.append(sock)
    return found


def raise_receive_buffer(context: aiocoap.Context, size: int) -> int | None:
    """Raise ``SO_RCVBUF`` of the server's UDP socket(s); returns the size granted.

    The kernel default holds about 166 datagrams: a burst beyond that would be dropped before
    aiocoap sees it. As root ``SO_RCVBUFFORCE`` passes ``net.core.rmem_max``.
    """
    granted: int | None = None
    for sock in udp_sockets(context):
        try:
            sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), size)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
            except OSError as exc:
                log.warning("cannot raise the CoAP receive buffer: %s", exc)
                continue
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return granted


#: True when the internals :class:`LeanContext` uses are there.
LEAN_RENDERING: bool = all(
    callable(x)
    for x in (
        getattr(aiocoap.Context, "_render_to_pipe", None),
        getattr(aiocoap.pipe, "run_driving_pipe", None),
        getattr(aiocoap.pipe, "error_to_message", None),
    )
)


class LeanContext(aiocoap.Context):
    """aiocoap's server context, without formatting every request for a task name.

    ``Context.render_to_pipe`` names each rendering task ``"Rendering for %r" % request``,
    which formats the whole request -- parsing the peer's address -- for every uplink, even
    though the name is only ever read by a debugger. Same behaviour otherwise.
    """

    def render_to_pipe(self, pipe: Any) -> None:
        aiocoap.pipe.run_driving_pipe(
            aiocoap.pipe.error_to_message(pipe, self.log),
            self._render_to_pipe(pipe),
            name="CoAP request",
        )


#: The server context class to use: :class:`LeanContext` where its internals exist.
ServerContext: type[aiocoap.Context] = LeanContext if LEAN_RENDERING else aiocoap.Context
