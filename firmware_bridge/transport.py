"""The byte-stream seam: :class:`ByteStream` and its pyserial implementation.

:class:`SerialByteStream` opens a serial device (a UART, a USB adapter or a pseudo-terminal)
with pyserial, reads it without blocking the event loop (``loop.add_reader`` on its file
descriptor) and translates every pyserial/OS failure into :class:`TransportError`, a
:class:`~citysense.errors.RetryableError`: the caller reconnects with back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Protocol

import serial

from citysense.errors import RetryableError

log = logging.getLogger(__name__)


class TransportError(RetryableError):
    """The port failed or vanished; reopen it with back-off."""


class PortLostError(TransportError):
    """The port failed while a command awaited its answer; ``lines`` holds what of the
    answer did arrive (a read's data line may be among them)."""

    def __init__(self, message: str, lines: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.lines = lines


class ByteStream(Protocol):
    """A bidirectional byte stream to one module."""

    async def read(self) -> bytes:
        """Some bytes (never empty); :class:`TransportError` when the port is gone."""
        ...

    async def write(self, data: bytes) -> None: ...

    async def aclose(self) -> None: ...


class SerialByteStream:
    """A serial port through pyserial (see the module docstring)."""

    def __init__(self, port: serial.Serial, device: str) -> None:
        self._port = port
        self.device = device
        self._closed = False

    @classmethod
    async def open(cls, device: str, baudrate: int) -> SerialByteStream:
        try:
            port = serial.Serial(device, baudrate, timeout=0, write_timeout=2.0)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise TransportError(f"cannot open {device}: {exc}") from exc
        log.debug("opened %s at %d baud", device, baudrate)
        return cls(port, device)

    async def read(self) -> bytes:
        # One os.read per call on pyserial's (non-blocking) descriptor: pyserial's own read
        # loops, and drops what it already read when the port then reports a hang-up.
        loop = asyncio.get_running_loop()
        woken = False
        while True:
            if self._closed:
                raise TransportError(f"{self.device} is closed")
            try:
                fd = self._port.fileno()
                data = os.read(fd, 4096)
            except BlockingIOError:
                data = b""
            except (serial.SerialException, OSError) as exc:
                raise TransportError(f"{self.device}: {exc}") from exc
            if data:
                return data
            if woken:
                # readable yet empty (VMIN=0): the device hung up
                raise TransportError(f"{self.device}: device disconnected")
            woken = True
            ready: asyncio.Future[None] = loop.create_future()

            def wake(fut: asyncio.Future[None] = ready) -> None:
                if not fut.done():
                    fut.set_result(None)

            loop.add_reader(fd, wake)
            try:
                await ready
            finally:
                loop.remove_reader(fd)

    async def write(self, data: bytes) -> None:
        if self._closed:
            raise TransportError(f"{self.device} is closed")
        try:
            self._port.write(data)
        except (serial.SerialException, OSError, TypeError) as exc:
            raise TransportError(f"{self.device}: {exc}") from exc

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(serial.SerialException, OSError):
            self._port.close()
