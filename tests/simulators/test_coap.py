"""The simulators' CoAP codec, checked against aiocoap's own encoder and decoder."""

from __future__ import annotations

import aiocoap
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citysense.errors import ConfigError
from simulators import coap
from simulators.faults import EXPECTED_CODES, parse_faults
from simulators.fleet import downlink_interval


def test_a_post_decodes_in_aiocoap_as_sent() -> None:
    datagram = coap.post(0x1234, b"\x01\x02\x03\x04", "/up", b"[1]", 112)
    msg = aiocoap.Message.decode(datagram)
    assert msg.mtype == aiocoap.CON
    assert msg.code == aiocoap.POST
    assert msg.mid == 0x1234
    assert msg.token == b"\x01\x02\x03\x04"
    assert msg.opt.uri_path == ("up",)
    assert msg.opt.content_format == 112
    assert msg.payload == b"[1]"


@pytest.mark.parametrize("length", [0, 1, 12, 13, 268, 269, 1000])
@pytest.mark.parametrize("number", [1, 11, 14, 60, 300, 2000])
def test_options_of_every_size_round_trip_with_aiocoap(number: int, length: int) -> None:
    value = b"abcdefghij" * 100
    msg = coap.Message(coap.ACK, coap.CHANGED, 7, b"tok", ((number, value[:length]),), b"x")
    ours = coap.encode(msg)
    assert coap.decode(ours) == msg
    theirs = aiocoap.Message.decode(ours)
    assert [(int(o.number), o.encode()) for o in theirs.opt.option_list()] == list(msg.options)
    assert (theirs.mid, theirs.token, theirs.payload) == (7, b"tok", b"x")


def test_a_piggybacked_answer_from_aiocoap_decodes() -> None:
    answer = aiocoap.Message(code=aiocoap.SERVICE_UNAVAILABLE, payload=b"full")
    answer.mtype, answer.mid, answer.token = aiocoap.ACK, 99, b"ab"
    answer.opt.max_age = 30
    msg = coap.decode(answer.encode())
    assert (msg.type, msg.code, msg.mid, msg.token) == (
        coap.ACK,
        coap.SERVICE_UNAVAILABLE,
        99,
        b"ab",
    )
    assert msg.uint_option(coap.MAX_AGE) == 30
    assert coap.code_text(msg.code) == "5.03"
    assert msg.payload == b"full"


@settings(deadline=None)
@given(st.binary(max_size=64))
def test_decode_raises_only_coap_error(data: bytes) -> None:
    try:
        coap.decode(data)
    except coap.CoapError:
        pass


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x40\x02\x00",
        b"\x80\x02\x00\x01",
        b"\x49\x02\x00\x01",
        b"\x40\x02\x00\x01\xff",
        b"\x40\x02\x00\x01\xd1",
        b"\x40\x02\x00\x01\xf0",
        b"\x40\x00\x00\x01\xff\x01",
    ],
)
def test_malformed_datagrams_are_refused(data: bytes) -> None:
    with pytest.raises(coap.CoapError):
        coap.decode(data)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", (None, False)),
        (b'[{"n":"report_interval","v":600}]', (600.0, True)),
        (b'[{"bn":"urn:imei:1:","n":"report_interval","v":120}]', (120.0, True)),
        (
            b'[{"bn":"d:","n":"cmd","vs":"report_interval"},{"n":"cmd_id","vs":"7"},'
            b'{"n":"cmd_args","vs":"{\\"seconds\\":900}"},{"n":"cmd_expires","v":2e9}]',
            (900.0, True),
        ),
        (b'[{"bn":"d:","n":"cmd","vs":"reboot"},{"n":"cmd_args","vs":"{}"}]', (None, True)),
        (b'[{"n":"report_interval","v":1}]', (None, True)),  # absurd: ignored
        (b'[{"n":"colour","vs":"blue"}]', (None, True)),
        (b"not json", (None, True)),
    ],
)
def test_downlinks_are_obeyed_or_ignored(
    payload: bytes, expected: tuple[float | None, bool]
) -> None:
    assert downlink_interval(payload) == expected


def test_fault_names_and_rates() -> None:
    assert parse_faults(["loss=0.1", "corrupt", "outage=3"]) == {
        "loss": 0.1,
        "corrupt": 0.02,
        "outage": 3.0,
    }
    for bad in (["nonsense"], ["loss=2"], ["loss=x"], ["outage=0"]):
        with pytest.raises(ConfigError):
            parse_faults(bad)
    assert set(EXPECTED_CODES) <= set(parse_faults(EXPECTED_CODES))
