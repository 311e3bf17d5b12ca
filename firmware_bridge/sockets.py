"""The UDP socket operations of :class:`~firmware_bridge.driver.ModuleDriver` over its
:class:`~firmware_bridge.channel.AtChannel`, driven by the dialect table: open (by answer or
by URC, binding or fixing the peer), read, push-URC decoding, send (reopening where the dialect
fixes the peer at open), and the retry of "busy" answers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial

from firmware_bridge.at import Response, Urc
from firmware_bridge.channel import AtChannel
from firmware_bridge.dialects import Dialect
from firmware_bridge.errors import (
    ANY_PEER,
    BUSY_PAUSE,
    BUSY_RETRIES,
    CommandError,
    CommandTimeoutError,
    DriverTimings,
    ModuleError,
    Received,
)
from firmware_bridge.transport import ByteStream, PortLostError


class SocketOps(AtChannel):
    """The socket operations over the channel (:class:`~firmware_bridge.driver.ModuleDriver`
    adds the module operations)."""

    def __init__(
        self, stream: ByteStream, dialect: Dialect, timings: DriverTimings | None = None
    ) -> None:
        super().__init__(stream, dialect, timings)
        #: open sockets: id -> (local port, remote address fixed at open)
        self._sockets: dict[int, tuple[int, tuple[str, int]]] = {}

    async def open_socket(self, port: int, peer: tuple[str, int] = ANY_PEER) -> int:
        """Close stale sockets, open a UDP socket on local ``port``; its id.

        ``peer``: the remote address of dialects that fix it at open (BC66 ``"UDP"``).
        """
        d = self.dialect
        for stale in d.socket_ids:
            try:
                await self.command(d.close_socket.format(sock=stale))
            except (CommandError, CommandTimeoutError):
                pass
        if d.open_socket_by_urc:
            sock = await self._open_by_urc(port, peer)
        else:
            sock = await self._open_by_answer(port)
        self._sockets[sock] = (port, peer)
        return sock

    async def _open_by_urc(self, port: int, peer: tuple[str, int]) -> int:
        d = self.dialect
        waiter = asyncio.ensure_future(self.wait_urc(d.open_socket_re, self.timings.socket_open))
        try:
            command = d.open_socket.format(
                sock=d.socket_ids[0], port=port, ip=peer[0], rport=peer[1]
            )
            await self.command(command)
            urc = await waiter
        finally:
            waiter.cancel()
        m = d.open_socket_re.match(urc.line)
        assert m is not None
        if m.group("err") != "0":
            raise ModuleError(f"socket open failed: {urc.line}")
        return int(m.group("sock"))

    async def _open_by_answer(self, port: int) -> int:
        d = self.dialect
        # not retried: a second open after a lost answer would leave two sockets
        lines = await self.ok(d.open_socket.format(port=port), retries=0)
        for line in lines:
            m = d.open_socket_re.fullmatch(line)
            if m:
                sock = int(m.group("sock"))
                if d.bind_socket is not None:
                    await self.ok(d.bind_socket.format(sock=sock, port=port))
                return sock
        raise ModuleError(f"no socket id in {lines!r}")

    async def close_socket(self, sock: int) -> None:
        await self.command(self.dialect.close_socket.format(sock=sock))

    async def read_datagram(
        self, sock: int, limit: int | None = None
    ) -> tuple[list[Received], int]:
        """One read (``read`` dialects): the datagrams in the answer and the bytes remaining."""
        d = self.dialect
        assert d.read is not None and d.read_re is not None
        command = d.read.format(sock=sock, max=limit or d.max_datagram)
        try:
            lines = (await self._busy_retried(partial(self.command, command, recover=False))).lines
        except (CommandTimeoutError, CommandError, PortLostError) as exc:
            # the data line may have come through although its final result (or the port,
            # which the next command then finds gone) did not
            lines = exc.lines
            if not any(d.read_re.fullmatch(line) for line in lines):
                raise
        out: list[Received] = []
        remaining = 0
        for line in lines:
            got = self.parse_read_line(line)
            if got is not None:
                out.append(got[0])
                remaining = got[1]
        return out, remaining

    def parse_read_line(self, line: str) -> tuple[Received, int] | None:
        """A read-response line -> (datagram, remaining), or ``None`` if it is not one."""
        read_re = self.dialect.read_re
        m = read_re.fullmatch(line) if read_re is not None else None
        if m is None:
            return None
        hexdata = m.group("hex")
        if len(hexdata) != 2 * int(m.group("len")):
            self.counters["garbage_lines"] += 1
            return None
        payload = bytes.fromhex(hexdata)
        return Received(payload, f"{m.group('ip')}:{m.group('port')}"), int(m.group("remaining"))

    def datagram_of(self, urc: Urc) -> Received | None:
        """The datagram a push URC carries (``hex``/``raw`` dialects), or ``None``."""
        d = self.dialect
        if d.downlink_urc is not None:
            m = d.downlink_urc.fullmatch(urc.line)
            if m:
                data = m.group("hex")
                if len(data) != 2 * int(m.group("len")):
                    self.counters["garbage_lines"] += 1
                    return None
                return Received(bytes.fromhex(data), "cdp")
        m = d.data_urc.match(urc.line)
        if m is None:
            return None
        if d.recv_mode == "hex":
            data = m.group("hex")
            if len(data) != int(m.group("len")) or len(data) % 2:
                self.counters["garbage_lines"] += 1
                return None
            return Received(bytes.fromhex(data), "unknown")
        if d.recv_mode == "raw":
            if urc.payload is None or len(urc.payload) != int(m.group("len")):
                self.counters["garbage_lines"] += 1
                return None
            return Received(urc.payload, "unknown")
        return None

    def is_data_announcement(self, urc: Urc) -> bool:
        return self.dialect.recv_mode == "read" and bool(self.dialect.data_urc.match(urc.line))

    async def send_datagram(self, sock: int, remote: str, payload: bytes) -> int:
        """Send one datagram to ``remote`` (``ip:port``); the socket id it went through
        (a dialect that fixes the peer at open reopens its socket for a new peer)."""
        d = self.dialect
        if len(payload) > d.max_datagram:
            raise ModuleError(f"datagram of {len(payload)} bytes exceeds {d.max_datagram}")
        ip, _, port = remote.rpartition(":")
        if d.send_reopen and self._sockets.get(sock, (0, ANY_PEER))[1] != (ip, int(port)):
            local = self._sockets.get(sock, (0, ANY_PEER))[0]
            sock = await self.open_socket(local, (ip, int(port)))
        hexdata = payload.hex().upper()
        length = len(hexdata) if d.send_len_unit == "hex" else len(payload)
        if d.send_connect is not None:
            await self.command(d.send_connect.format(sock=sock, ip=ip, port=port))
        command = d.send.format(sock=sock, ip=ip, port=port, len=length, hex=hexdata)
        within = self.timings.command if not d.send_result else self.timings.socket_open
        await self._busy_retried(
            partial(self.command, command, within, await_send_result=d.send_result)
        )
        return sock

    async def _busy_retried(self, attempt: Callable[[], Awaitable[Response]]) -> Response:
        """``attempt()`` (one command), again after a short pause while the module answers it
        is busy (``retry_codes``: BC95 ``+CME ERROR: 159/536/537``)."""
        for n in range(BUSY_RETRIES + 1):
            try:
                return await attempt()
            except CommandError as exc:
                # lines that came with the error (a late datagram line) go to the caller
                retry = exc.code in self.dialect.retry_codes and not exc.lines
                if not retry or n == BUSY_RETRIES:
                    raise
                self.counters["busy"] += 1
                await asyncio.sleep(BUSY_PAUSE * (n + 1))
        raise AssertionError("unreachable")
