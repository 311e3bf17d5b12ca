"""SenML codec: RFC 8428 examples, round trips, and every malformed input raises SenmlError."""

from __future__ import annotations

import json
import math

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citysense.errors import SenmlError
from citysense.senml import (
    CF_SENML_CBOR,
    CF_SENML_JSON,
    SenmlLimits,
    SenmlRecord,
    decode_senml,
    encode_senml,
    encode_values,
    fast_json_records,
    to_samples,
)

NOW = 1_764_000_000.0
BOTH = (CF_SENML_JSON, CF_SENML_CBOR)


def decode_json(text: str) -> list[SenmlRecord]:
    return decode_senml(text.encode(), CF_SENML_JSON, NOW)


# --------------------------------------------------------------------------- RFC 8428


def test_rfc8428_single_datapoint_gets_now() -> None:
    recs = decode_json('[{"n":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1}]')
    assert recs == [SenmlRecord("urn:dev:ow:10e2073a01080063", NOW, 23.1, "Cel")]


def test_rfc8428_multiple_datapoints_base_name() -> None:
    recs = decode_json(
        '[{"bn":"urn:dev:ow:10e2073a01080063:","n":"voltage","u":"V","v":120.1},'
        '{"n":"current","u":"A","v":1.2}]'
    )
    assert recs == [
        SenmlRecord("urn:dev:ow:10e2073a01080063:voltage", NOW, 120.1, "V"),
        SenmlRecord("urn:dev:ow:10e2073a01080063:current", NOW, 1.2, "A"),
    ]


def test_rfc8428_multiple_measurements_resolve_as_the_rfc_lists() -> None:
    # RFC 8428 section 5.1.3 and its resolved form in section 4.6.
    recs = decode_json(
        '[{"bn":"urn:dev:ow:10e2073a0108006:","bt":1.276020076001e+09,'
        '"bu":"A","bver":5,"n":"voltage","u":"V","v":120.1},'
        '{"n":"current","t":-5,"v":1.2},{"n":"current","t":-4,"v":1.3},'
        '{"n":"current","t":-3,"v":1.4},{"n":"current","t":-2,"v":1.5},'
        '{"n":"current","t":-1,"v":1.6},{"n":"current","v":1.7}]'
    )
    assert recs[0] == SenmlRecord(
        "urn:dev:ow:10e2073a0108006:voltage", 1.276020076001e09, 120.1, "V"
    )
    currents = recs[1:]
    assert [r.value for r in currents] == [1.2, 1.3, 1.4, 1.5, 1.6, 1.7]
    assert all(r.unit == "A" and r.name.endswith(":current") for r in currents)
    expected_times = [1.276020071001e09 + i for i in range(6)]
    assert all(
        math.isclose(r.time, t, abs_tol=1e-6) for r, t in zip(currents, expected_times, strict=True)
    )


def test_base_value_and_relative_time() -> None:
    recs = decode_json('[{"bn":"d1:","bv":10,"n":"a","v":1.5,"t":-60},{"n":"b","vb":true}]')
    assert recs[0] == SenmlRecord("d1:a", NOW - 60, 11.5)
    assert recs[1] == SenmlRecord("d1:b", NOW, True)


def test_string_and_data_values() -> None:
    recs = decode_json('[{"n":"d:s","vs":"hello"},{"n":"d:x","vd":"aGk"}]')
    assert recs[0].value == "hello"
    assert recs[1].value == b"hi"


def test_cbor_labels() -> None:
    payload = cbor2.dumps(
        [{-2: "urn:imei:1:", -3: 1.7e9, 0: "pm25", 1: "ug/m3", 2: 38}, {0: "leak", 4: False}]
    )
    recs = decode_senml(payload, CF_SENML_CBOR, NOW)
    assert recs == [
        SenmlRecord("urn:imei:1:pm25", 1.7e9, 38.0, "ug/m3"),
        SenmlRecord("urn:imei:1:leak", 1.7e9, False),
    ]


def test_to_samples_groups_by_device_and_time() -> None:
    recs = decode_json(
        '[{"bn":"urn:imei:867726031076062:","bt":1.7e9,"n":"pm25","v":38},'
        '{"n":"temperature","v":21.4,"t":-60},{"n":"pm10","v":50}]'
    )
    assert to_samples(recs) == {
        ("urn:imei:867726031076062", 1_700_000_000_000): {"pm25": 38.0, "pm10": 50.0},
        ("urn:imei:867726031076062", 1_699_999_940_000): {"temperature": 21.4},
    }


def test_to_samples_refuses_a_metric_twice_at_one_time() -> None:
    recs = decode_json('[{"bn":"d:","n":"pm25","v":1},{"n":"pm25","v":2}]')
    with pytest.raises(SenmlError):
        to_samples(recs)


# --------------------------------------------------------------------------- round trips

names = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
devices = st.from_regex(r"urn:imei:[0-9]{15}", fullmatch=True)
numbers = st.floats(
    allow_nan=False, allow_infinity=False, width=64, min_value=-1e12, max_value=1e12
)
values = st.one_of(numbers, st.booleans())


@settings(max_examples=150, deadline=None)
@given(
    device=devices,
    t_ms=st.integers(min_value=1_500_000_000_000, max_value=2_000_000_000_000),
    vals=st.dictionaries(names, values, min_size=1, max_size=8),
    cf=st.sampled_from(BOTH),
)
def test_encode_values_round_trips(
    device: str, t_ms: int, vals: dict[str, float | bool], cf: int
) -> None:
    payload = encode_values(device, t_ms, vals, cf)
    samples = to_samples(decode_senml(payload, cf, NOW))
    assert samples == {(device, t_ms): vals}


@settings(max_examples=150, deadline=None)
@given(
    recs=st.lists(
        st.fixed_dictionaries(
            {"n": names, "v": numbers},
            optional={
                "t": st.integers(min_value=-1000, max_value=0),
                "u": st.sampled_from(["Cel", "V", "%RH"]),
            },
        ),
        min_size=1,
        max_size=20,
    ),
    base=st.fixed_dictionaries(
        {"bn": st.just("urn:imei:1:"), "bt": st.floats(min_value=1e9, max_value=2e9)}
    ),
)
def test_json_and_cbor_decode_to_the_same_records(
    recs: list[dict[str, object]], base: dict[str, object]
) -> None:
    pack = [{**base, **recs[0]}, *recs[1:]]
    from_json = decode_senml(encode_senml(pack, CF_SENML_JSON), CF_SENML_JSON, NOW)
    from_cbor = decode_senml(encode_senml(pack, CF_SENML_CBOR), CF_SENML_CBOR, NOW)
    assert from_json == from_cbor
    assert len(from_json) == len(pack)


# --------------------------------------------------------------------------- malformed input

DEEP = 100_000
MALFORMED_JSON = [
    b"",
    b"{",
    b"[" * DEEP + b"]" * DEEP,
    b'[{"n":' * 1000,
    b"{}",
    b"[1]",
    b'[{"n":"a","n":"b","v":1}]',  # duplicate key
    b'[{"n":"' + b"x" * 10_000 + b'","v":1}]',  # 10k-char name
    b'[{"n":"a","v":NaN}]',
    b'[{"n":"a","v":Infinity}]',
    b'[{"n":"a","v":"1"}]',
    b'[{"n":"a","vb":1}]',
    b'[{"n":"a"}]',  # no value
    b'[{"n":"a","v":1,"vb":true}]',
    b'[{"n":" bad","v":1}]',
    b'[{"n":"a","v":1,"foo_":1}]',  # must-understand field
    b"\xff\xfe[]",
    b'[{"n":"a","v":1e999}]',
    b'[{"n":"a","v":1' + b"0" * 400 + b"}]",  # an integer beyond any float
    b'[{"n":"a","v":[1]}]',
]
MALFORMED_CBOR = [
    b"",
    b"\x81",  # truncated: array of one, nothing follows
    b"\x81" * DEEP,
    b"\x9f\xa1\x00\x61a",  # indefinite-length array without break
    b"\x9f\xbf\x00\x61a\x02\x01",  # indefinite map without break
    b"\xa1\x00\x61a",  # a map, not an array
    cbor2.dumps([{0: "a", 2: 1}]) + b"\x00",  # trailing byte
    b"\x81\xa2\x00\x61a\x00\x61b",  # duplicate key
    cbor2.dumps([{0: "x" * 10_000, 2: 1}]),
    cbor2.dumps([{0: "a", 2: [1]}]),
    cbor2.dumps([{0: "a", 2: cbor2.CBORTag(1, 5)}]),
    b"\x81\xa1\x00\x7f\x61a\xff",  # indefinite text string
    b"\x81\xa1\x00\x1c",  # reserved additional information
    cbor2.dumps([{0: "a", 2: float("nan")}]),
    cbor2.dumps([{0: "a", 2: 10**400}]),  # a bignum tag: refused
]


@pytest.mark.parametrize("payload", MALFORMED_JSON, ids=range(len(MALFORMED_JSON)))
def test_malformed_json_raises_senml_error(payload: bytes) -> None:
    with pytest.raises(SenmlError):
        decode_senml(payload, CF_SENML_JSON, NOW, SenmlLimits(max_bytes=1 << 20))


@pytest.mark.parametrize("payload", MALFORMED_CBOR, ids=range(len(MALFORMED_CBOR)))
def test_malformed_cbor_raises_senml_error(payload: bytes) -> None:
    with pytest.raises(SenmlError):
        decode_senml(payload, CF_SENML_CBOR, NOW, SenmlLimits(max_bytes=1 << 20))


def test_limits() -> None:
    with pytest.raises(SenmlError) as err:
        decode_senml(b"[" + b" " * 2000 + b"]", CF_SENML_JSON, NOW, SenmlLimits(max_bytes=1024))
    assert err.value.reason == "too_large"
    many = encode_senml([{"n": f"d:m{i}", "v": i} for i in range(20)], CF_SENML_JSON)
    with pytest.raises(SenmlError) as err:
        decode_senml(many, CF_SENML_JSON, NOW, SenmlLimits(max_records=10))
    assert err.value.reason == "too_many_records"
    with pytest.raises(SenmlError):
        decode_senml(b"[]", 50, NOW)


@settings(max_examples=400, deadline=None)
@given(payload=st.binary(max_size=300), cf=st.sampled_from(BOTH))
def test_random_bytes_never_raise_anything_but_senml_error(payload: bytes, cf: int) -> None:
    try:
        decode_senml(payload, cf, NOW)
    except SenmlError:
        pass


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_valid_payloads_never_raise_anything_but_senml_error(data: st.DataObject) -> None:
    cf = data.draw(st.sampled_from(BOTH))
    payload = bytearray(
        encode_values("urn:imei:1", 1_700_000_000_000, {"pm25": 3.5, "leak": True}, cf)
    )
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(payload)))
    try:
        decode_senml(bytes(payload[:cut]), cf, NOW)
    except SenmlError:
        pass


_AIR = "urn:imei:490154203237518"
_NOW = 1_764_000_000_000


# --------------------------------------------------------------------------- the fast path


_numbers = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from([0, -0.0, 1.7e9, 2**28, 2**28 - 1, -60, 1e300]),
)
_wild = st.one_of(
    st.floats(),
    st.booleans(),
    st.none(),
    st.text(max_size=4),
    st.sampled_from(["", "bad name", "x" * 300, "9a", "_x", "ug/m3"]),
    st.lists(st.integers(), max_size=2),
)
_plain = st.builds(
    lambda fields, value: {**fields, **value},
    st.fixed_dictionaries(
        {"n": st.sampled_from(["pm25", "pm10", "leak", "temperature"])},
        optional={
            "bn": st.sampled_from([f"{_AIR}:", "urn:imei:1:", "", "a b:"]),
            "bt": _numbers,
            "bu": st.sampled_from(["ug/m3", "Cel", ""]),
            "t": _numbers,
            "u": st.sampled_from(["ug/m3", "Cel", ""]),
        },
    ),
    st.one_of(st.fixed_dictionaries({"v": _numbers}), st.fixed_dictionaries({"vb": st.booleans()})),
)


@st.composite
def _packs(draw: st.DrawFn) -> list[dict[str, object]]:
    """Plain packs, now and then with one field that takes them off the fast path."""
    records = draw(st.lists(_plain, min_size=1, max_size=5))
    if draw(st.booleans()) and draw(st.booleans()):
        rec = draw(st.sampled_from(records))
        key = draw(st.sampled_from(["bn", "bt", "n", "u", "v", "vb", "t", "bv", "s", "vs", "x_"]))
        rec[key] = draw(_wild)
    return records


def _full(payload: bytes) -> object:
    try:
        return decode_senml(payload, CF_SENML_JSON, _NOW / 1000)
    except SenmlError:
        return "refused"


@settings(max_examples=400, deadline=None)
@given(_packs())
def test_fast_path_agrees_with_the_full_decoder(records: list[dict[str, object]]) -> None:
    try:
        payload = json.dumps(records).encode()
    except ValueError:
        return
    fast = fast_json_records(payload, _NOW / 1000)
    if fast is not None:
        assert fast == _full(payload)


@pytest.mark.parametrize(
    "payload",
    [
        b'[{"bn":"a:","n":"pm25","v":1,"v":2}]',  # duplicate field
        b'[{"bn":"a:","n":"pm25","v":NaN}]',
        b'[{"bn":"a:","n":"pm25","v":1}',  # truncated
        '[{"bn":"a:","n":"pm25","v":1}]'.encode("utf-16"),
        b'[{"bn":"a:","n":"pm25","vb":1}]',
        b'[{"bn":"a:","n":"pm25"}]',
        b'[[["bn","a:"]]]',
        b'{"bn":"a:"}',
        b"[" * 600 + b"]" * 600,
    ],
)
def test_fast_path_leaves_the_unusual_to_the_full_decoder(payload: bytes) -> None:
    assert fast_json_records(payload, _NOW / 1000) is None


def test_fast_path_takes_the_common_pack() -> None:
    payload = encode_values(_AIR, _NOW, {"pm25": 35.0, "leak": True}, CF_SENML_JSON)
    fast = fast_json_records(payload, _NOW / 1000)
    assert fast is not None and fast == _full(payload)
    assert not math.isnan(fast[0].time)
