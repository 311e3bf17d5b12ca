"""The raw-UDP CoAP client against a scripted peer on real UDP: RFC 7252 retransmission with
the same message id, separate responses after an empty ACK, resets, token matching."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import cast

from simulators import coap
from simulators.coap_client import CoapEndpoint, Result, TransmissionParameters

Reply = Callable[[coap.Message], None]
Script = Callable[[coap.Message, Reply, int], None]


class Peer(asyncio.DatagramProtocol):
    """A UDP peer on 127.0.0.1 that records what it gets and answers by ``script``."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.got: list[tuple[float, coap.Message]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        msg = coap.decode(data)
        self.got.append((asyncio.get_running_loop().time(), msg))
        transport = self.transport
        assert transport is not None

        def reply(answer: coap.Message) -> None:
            transport.sendto(coap.encode(answer), addr)

        self.script(msg, reply, len(self.got))


async def exchange(script: Script, params: TransmissionParameters) -> tuple[Result, Peer]:
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(
        lambda: Peer(script), local_addr=("127.0.0.1", 0)
    )
    assert isinstance(peer, Peer)
    port = transport.get_extra_info("sockname")[1]
    endpoint = await CoapEndpoint.open(("127.0.0.1", port), params)
    done: asyncio.Future[Result] = loop.create_future()
    try:
        endpoint.request(
            lambda mid, token: coap.post(mid, token, "/up", b"[]", 110), done.set_result
        )
        result = await asyncio.wait_for(done, 30.0)
    finally:
        await endpoint.aclose()
        transport.close()
    return result, peer


def test_unanswered_con_is_retransmitted_with_the_same_id_and_doubling_timeouts() -> None:
    params = TransmissionParameters(ack_timeout=0.1, ack_random_factor=1.5, max_retransmit=4)
    result, peer = asyncio.run(exchange(lambda *a: None, params))
    assert result.outcome == "timeout"
    assert result.transmissions == 5  # the first and MAX_RETRANSMIT more
    msgs = [m for _, m in peer.got]
    assert len(msgs) == 5
    assert len({m.mid for m in msgs}) == 1 and len({m.token for m in msgs}) == 1
    times = [t for t, _ in peer.got]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # the waits double from an initial 0.1-0.15 s: 0.1 + 0.2 + 0.4 + 0.8 s at the least (a
    # loaded machine only makes them longer), the last far longer than the first
    assert sum(gaps) >= 1.5 * 0.9, gaps
    assert gaps[-1] > gaps[0], gaps


def test_piggybacked_answer_after_a_lost_first_try() -> None:
    params = TransmissionParameters(ack_timeout=0.1)

    def script(msg: coap.Message, reply: Reply, n: int) -> None:
        if n >= 2:  # the first transmission is "lost"
            reply(coap.Message(coap.ACK, coap.CHANGED, msg.mid, msg.token, (), b"ok"))

    result, peer = asyncio.run(exchange(script, params))
    assert (result.outcome, result.code, result.payload) == ("response", coap.CHANGED, b"ok")
    assert result.transmissions == 2
    assert peer.got[0][1].mid == peer.got[1][1].mid


def test_separate_response_after_an_empty_ack_is_acknowledged() -> None:
    params = TransmissionParameters(ack_timeout=0.1)

    def script(msg: coap.Message, reply: Reply, n: int) -> None:
        if n == 1:
            reply(coap.Message(coap.ACK, coap.EMPTY, msg.mid))
            answer = coap.Message(
                coap.CON, coap.SERVICE_UNAVAILABLE, 4242, msg.token, ((coap.MAX_AGE, b"\x1e"),)
            )
            reply(answer)

    result, peer = asyncio.run(exchange(script, params))
    assert (result.outcome, result.code, result.max_age) == (
        "response",
        coap.SERVICE_UNAVAILABLE,
        30,
    )
    # the client acknowledged the separate response and did not retransmit its request
    kinds = [(m.type, m.code, m.mid) for _, m in peer.got]
    assert kinds[0][:2] == (coap.CON, coap.POST)
    assert (coap.ACK, coap.EMPTY, 4242) in kinds
    assert sum(1 for k in kinds if k[1] == coap.POST) == 1


def test_answers_with_a_wrong_token_are_ignored_and_reset_ends_the_exchange() -> None:
    params = TransmissionParameters(ack_timeout=0.1)

    def script(msg: coap.Message, reply: Reply, n: int) -> None:
        if n == 1:
            reply(coap.Message(coap.ACK, coap.CHANGED, msg.mid, b"nope"))
        else:
            reply(coap.Message(coap.RST, coap.EMPTY, msg.mid))

    result, _ = asyncio.run(exchange(script, params))
    assert result.outcome == "reset"
    assert result.transmissions == 2
