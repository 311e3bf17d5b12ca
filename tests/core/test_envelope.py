"""The batch envelope codec: round trip, every field checked, limits refused."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citysense.envelope import (
    MAX_ENVELOPE_BYTES,
    MAX_READINGS,
    decode_batch,
    encode_batch,
    reading_to_dict,
)
from citysense.errors import EnvelopeError
from citysense.model import Batch, Reading

R = Reading(
    "urn:imei:490154203237518",
    "air_station",
    "zhengdong",
    "ruyi-lake",
    1763999998000,
    {"pm25": 35.2, "pm10": 61.0},
)


def envelope(**override: object) -> bytes:
    doc: dict[str, object] = {
        "v": 1,
        "gateway": "gw-zhengdong-01",
        "seq": 1842,
        "sent": 1764000000123,
        "readings": [
            {
                "device": R.device,
                "kind": R.kind,
                "district": R.district,
                "site": R.site,
                "t": R.t,
                "values": R.values,
            }
        ],
    }
    doc.update(override)
    return json.dumps(doc).encode()


def test_the_contract_example_decodes() -> None:
    batch = decode_batch(envelope())
    assert batch == Batch("gw-zhengdong-01", 1842, 1764000000123, (R,))


reading_st = st.builds(
    Reading,
    device=st.from_regex(r"[A-Za-z0-9:._-]{1,96}", fullmatch=True),
    kind=st.sampled_from(["air_station", "water_meter"]),
    district=st.from_regex(r"[a-z0-9_-]{1,48}", fullmatch=True),
    site=st.from_regex(r"[a-z0-9_-]{1,48}", fullmatch=True),
    t=st.integers(min_value=0, max_value=2**53),
    values=st.dictionaries(
        st.sampled_from(["pm25", "leak", "battery"]),
        st.one_of(st.booleans(), st.floats(allow_nan=False, allow_infinity=False)),
        min_size=1,
    ),
)


@settings(max_examples=100, deadline=None)
@given(
    gateway=st.from_regex(r"[a-z0-9][a-z0-9-]{0,47}", fullmatch=True),
    seq=st.integers(min_value=1, max_value=2**53),
    readings=st.lists(reading_st, max_size=20),
)
def test_round_trip(gateway: str, seq: int, readings: list[Reading]) -> None:
    batch = Batch(gateway, seq, 1764000000123, tuple(readings))
    assert decode_batch(encode_batch(batch)) == batch


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"v": 2}, "bad_version"),
        ({"v": "1"}, "bad_version"),
        ({"v": True}, "bad_version"),
        ({"gateway": "GW_BAD"}, "bad_field"),
        ({"gateway": 7}, "bad_field"),
        ({"seq": 0}, "bad_field"),
        ({"seq": 1.5}, "bad_field"),
        ({"seq": True}, "bad_field"),
        ({"sent": "now"}, "bad_field"),
        ({"readings": {}}, "bad_field"),
        ({"readings": [1]}, "bad_field"),
        (
            {
                "readings": [
                    {
                        "device": "d",
                        "kind": "air_station",
                        "district": "x",
                        "site": "y",
                        "t": 1,
                        "values": {},
                    }
                ]
            },
            "bad_field",
        ),
        (
            {
                "readings": [
                    {
                        "device": "d d",
                        "kind": "air_station",
                        "district": "x",
                        "site": "y",
                        "t": 1,
                        "values": {"pm25": 1},
                    }
                ]
            },
            "bad_field",
        ),
        (
            {
                "readings": [
                    {
                        "device": "d",
                        "kind": "air_station",
                        "district": "X",
                        "site": "y",
                        "t": 1,
                        "values": {"pm25": 1},
                    }
                ]
            },
            "bad_field",
        ),
        (
            {
                "readings": [
                    {
                        "device": "d",
                        "kind": "air_station",
                        "district": "x",
                        "site": "y",
                        "t": 1.5,
                        "values": {"pm25": 1},
                    }
                ]
            },
            "bad_field",
        ),
        (
            {
                "readings": [
                    {
                        "device": "d",
                        "kind": "air_station",
                        "district": "x",
                        "site": "y",
                        "t": 1,
                        "values": {"pm25": "1"},
                    }
                ]
            },
            "bad_field",
        ),
        (
            {
                "readings": [
                    {
                        "device": "d",
                        "kind": 5,
                        "district": "x",
                        "site": "y",
                        "t": 1,
                        "values": {"pm25": 1},
                    }
                ]
            },
            "bad_field",
        ),
    ],
)
def test_every_field_is_checked(override: dict[str, object], reason: str) -> None:
    with pytest.raises(EnvelopeError) as err:
        decode_batch(envelope(**override))
    assert err.value.reason == reason


@pytest.mark.parametrize(
    "payload", [b"", b"{", b"[]", b"\xff", b'{"v":1,"seq":NaN}', b"[" * 100_000]
)
def test_malformed_json(payload: bytes) -> None:
    with pytest.raises(EnvelopeError):
        decode_batch(payload)


def test_over_limit_refused_both_ways() -> None:
    with pytest.raises(EnvelopeError) as err:
        decode_batch(b" " * (MAX_ENVELOPE_BYTES + 1))
    assert err.value.reason == "too_large"
    too_many = Batch("gw-1", 1, 0, tuple([R] * (MAX_READINGS + 1)))
    with pytest.raises(EnvelopeError):
        encode_batch(too_many)
    with pytest.raises(EnvelopeError):
        decode_batch(
            envelope(readings=[json.loads(envelope())["readings"][0]] * (MAX_READINGS + 1))
        )
    big = Reading("d", "air_station", "x", "y", 1, {f"m{i}": 1.0 for i in range(20000)})
    with pytest.raises(EnvelopeError):
        encode_batch(Batch("gw-1", 1, 0, (big, big)))


def test_nan_cannot_be_encoded() -> None:
    bad = Reading("d", "air_station", "x", "y", 1, {"pm25": float("nan")})
    with pytest.raises(EnvelopeError):
        encode_batch(Batch("gw-1", 1, 0, (bad,)))


def test_a_reading_object_holds_every_field_of_a_reading_in_wire_order() -> None:
    assert list(reading_to_dict(R).items()) == [
        ("device", R.device),
        ("kind", R.kind),
        ("district", R.district),
        ("site", R.site),
        ("t", R.t),
        ("values", R.values),
    ]
