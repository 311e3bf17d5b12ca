"""citysense.compat.aiocoap over real UDP: the gateway's tuning reaches every incoming
message without touching aiocoap's defaults; sockets found; the fallbacks."""

from __future__ import annotations

import asyncio
import socket

import aiocoap
import aiocoap.resource
from aiocoap.numbers.codes import Code
from aiocoap.numbers.constants import TransportTuning

from citysense.compat import aiocoap as compat


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Recorder(aiocoap.resource.Resource):
    def __init__(self) -> None:
        super().__init__()
        self.tunings: list[TransportTuning] = []

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        self.tunings.append(request.transport_tuning)
        return aiocoap.Message(code=Code.CHANGED)


def test_tuning_reaches_incoming_messages_and_defaults_stay() -> None:
    default_lifetime = TransportTuning().EXCHANGE_LIFETIME
    default_delay = TransportTuning().EMPTY_ACK_DELAY

    async def main() -> None:
        port = _free_udp_port()
        site = aiocoap.resource.Site()
        rec = Recorder()
        site.add_resource(["up"], rec)
        assert compat.ServerContext is compat.LeanContext
        server = await compat.ServerContext.create_server_context(site, bind=("127.0.0.1", port))
        client = await aiocoap.Context.create_client_context()
        try:
            tuning = compat.GatewayTuning(1.0, 60.0)
            assert compat.tune_incoming(server, tuning) >= 1
            assert compat.udp_sockets(server)
            granted = compat.raise_receive_buffer(server, 1 << 20)
            assert granted is not None and granted > 0
            req = aiocoap.Message(code=Code.POST, uri=f"coap://127.0.0.1:{port}/up", payload=b"x")
            response = await asyncio.wait_for(client.request(req).response, 20)
            assert response.code == Code.CHANGED
        finally:
            await client.shutdown()
            await server.shutdown()
        assert rec.tunings == [tuning]
        assert (tuning.EMPTY_ACK_DELAY, tuning.EXCHANGE_LIFETIME) == (1.0, 60.0)

    asyncio.run(main())
    # nothing process-wide changed: other contexts keep aiocoap's timings
    assert default_lifetime == TransportTuning().EXCHANGE_LIFETIME
    assert default_delay == TransportTuning().EMPTY_ACK_DELAY
    assert default_lifetime == aiocoap.Message(code=Code.GET).transport_tuning.EXCHANGE_LIFETIME


def test_without_the_internals_nothing_is_tuned() -> None:
    class Elsewhere:
        """Stand-in for a context of an aiocoap whose internals moved."""

        def __init__(self) -> None:
            self.request_interfaces = [object()]

    assert compat.tune_incoming(Elsewhere(), compat.GatewayTuning(1, 2)) == 0  # type: ignore[arg-type]
    assert compat.udp_sockets(Elsewhere()) == []  # type: ignore[arg-type]
    assert compat.raise_receive_buffer(Elsewhere(), 1 << 20) is None  # type: ignore[arg-type]
