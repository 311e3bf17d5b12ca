"""MQTT 3.1.1 fallback, through a proxy that STANDS IN FOR A BROKER WITHOUT MQTT v5.

Mosquitto 2 speaks v5 and has no switch to refuse it, and no 3.1.1-only broker installs here.
The proxy answers a v5 CONNECT the way a 3.1.1 broker does (CONNACK with return code 1,
"unacceptable protocol version") and passes any other connection through to the real Mosquitto,
byte for byte.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from pathlib import Path

import pytest

from tests.ingest.gateway_double import (
    GatewayDouble,
    expected_readings,
    ingest_settings,
    ingestor_thread,
    make_batch,
    stored_readings,
)
from tests.servers import InfluxServer, MosquittoServer


def _read_packet(sock: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    head = exactly(1)
    length, shift, raw = 0, 0, b""
    while True:
        byte = exactly(1)
        raw += byte
        length |= (byte[0] & 0x7F) << shift
        shift += 7
        if not byte[0] & 0x80:
            break
    return head + raw + exactly(length)


class V311OnlyProxy:
    """Refuses MQTT v5 CONNECTs; relays every other connection to ``upstream_port``."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.refused_v5 = 0
        self.relayed = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> V311OnlyProxy:
        self._accepting.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
        for t in [self._accepting, *self._threads]:
            t.join(10)

    def _track(self, s: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(s)
        return s

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(self._track(client),), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, client: socket.socket) -> None:
        try:
            connect = _read_packet(client)
        except (ConnectionError, OSError):
            return
        # CONNECT: fixed header, remaining length, then "\0\4MQTT" and the protocol level.
        at = connect.index(b"MQTT") + 4
        if connect[at] == 5:
            self.refused_v5 += 1
            with contextlib.suppress(OSError):
                client.sendall(b"\x20\x02\x00\x01")
                client.shutdown(socket.SHUT_RDWR)
            return
        self.relayed += 1
        upstream = self._track(socket.create_connection(("127.0.0.1", self.upstream_port)))
        upstream.sendall(connect)
        back = threading.Thread(target=self._pump, args=(upstream, client), daemon=True)
        self._threads.append(back)
        back.start()
        self._pump(client, upstream)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_RDWR)


def test_falls_back_to_mqtt_311(
    mosquitto: MosquittoServer,
    influx_db: InfluxServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="ingest")
    batches = [make_batch("gw-test-01", seq, 5) for seq in range(1, 31)]
    with V311OnlyProxy(mosquitto.port) as proxy:
        settings = ingest_settings(f"mqtt://127.0.0.1:{proxy.port}", influx_db, tmp_path / "s")
        gw = GatewayDouble(mosquitto.port)
        try:
            with ingestor_thread(settings):
                for b in batches:
                    gw.publish(b)
                gw.wait_all_confirmed(30)
        finally:
            gw.close()
        assert proxy.refused_v5 >= 1 and proxy.relayed >= 1
    assert "lacks MQTT v5" in caplog.text
    assert sorted(stored_readings(influx_db)) == expected_readings(batches)
