"""Intake (pure): uplink bytes -> readings of registered devices, or one refusal for all."""

from __future__ import annotations

import pytest

from citysense.registry import Device, Registry
from citysense.senml import CF_SENML_CBOR, CF_SENML_JSON, encode_senml, encode_values
from edge.intake import (
    BAD_REQUEST,
    FORBIDDEN,
    TOO_LARGE,
    UNSUPPORTED_FORMAT,
    Intake,
    UplinkRefused,
)
from edge.service import content_format_of

NOW = 1_764_000_000_000
AIR = "urn:imei:490154203237518"
WATER = "urn:imei:490154203237519"
REGISTRY = Registry(
    [
        Device(AIR, "air_station", "zhengdong", "ruyi-lake", 34.7, 113.7, "gw-01"),
        Device(WATER, "water_meter", "jinshui", "w-3", 34.8, 113.6, "gw-01"),
    ]
)
INTAKE = Intake(REGISTRY, max_bytes=1024)


def pack(*records: dict[str, object]) -> bytes:
    return encode_senml(list(records), CF_SENML_JSON)


def test_a_pack_becomes_attributed_typed_readings() -> None:
    payload = pack(
        {"bn": f"{AIR}:", "bt": NOW / 1000, "n": "pm25", "u": "ug/m3", "v": 35},
        {"n": "pm10", "v": 61.5},
        {"n": "pm25", "t": -60, "v": 30},
    )
    readings = INTAKE.readings_of_uplink(payload, CF_SENML_JSON, NOW)
    assert [(r.t, r.values) for r in readings] == [
        (NOW, {"pm25": 35.0, "pm10": 61.5}),
        (NOW - 60_000, {"pm25": 30.0}),
    ]
    assert {(r.kind, r.district, r.site) for r in readings} == {
        ("air_station", "zhengdong", "ruyi-lake")
    }
    assert type(readings[0].values["pm25"]) is float


def test_no_time_gets_the_receive_time_and_booleans_stay_booleans() -> None:
    payload = pack({"bn": f"{WATER}:", "n": "leak", "vb": True}, {"n": "water_flow", "v": 1})
    (reading,) = INTAKE.readings_of_uplink(payload, CF_SENML_JSON, NOW)
    assert reading.t == NOW
    assert reading.values == {"leak": True, "water_flow": 1.0}


def test_cbor_and_json_agree() -> None:
    values = {"pm25": 12.0, "humidity": 55.0}
    as_json = INTAKE.readings_of_uplink(
        encode_values(AIR, NOW, values, CF_SENML_JSON), CF_SENML_JSON, NOW
    )
    as_cbor = INTAKE.readings_of_uplink(
        encode_values(AIR, NOW, values, CF_SENML_CBOR), CF_SENML_CBOR, NOW
    )
    assert as_json == as_cbor


@pytest.mark.parametrize(
    ("payload", "cf", "answer", "reason"),
    [
        (b"[{", CF_SENML_JSON, BAD_REQUEST, "malformed"),
        (b"[]", CF_SENML_JSON, BAD_REQUEST, "no_values"),
        (pack({"bn": f"{AIR}:", "n": "pm25", "v": -1}), CF_SENML_JSON, BAD_REQUEST, "out_of_range"),
        (
            pack({"bn": f"{AIR}:", "n": "pm25", "v": 1}, {"n": "leak", "vb": True}),
            CF_SENML_JSON,
            BAD_REQUEST,
            "metric_not_for_kind",
        ),
        (
            pack({"bn": f"{AIR}:", "n": "nope", "v": 1}),
            CF_SENML_JSON,
            BAD_REQUEST,
            "unknown_metric",
        ),
        (pack({"bn": f"{AIR}:", "n": "pm25", "vs": "x"}), CF_SENML_JSON, BAD_REQUEST, "wrong_type"),
        (
            pack({"bn": f"{AIR}:", "n": "pm25", "u": "mg/m3", "v": 1}),
            CF_SENML_JSON,
            BAD_REQUEST,
            "wrong_unit",
        ),
        (
            pack({"bn": f"{AIR}:", "bt": (NOW + 3_600_000) / 1000, "n": "pm25", "v": 1}),
            CF_SENML_JSON,
            BAD_REQUEST,
            "time_in_future",
        ),
        (
            pack({"bn": f"{AIR}:", "bt": (NOW - 8 * 86_400_000) / 1000, "n": "pm25", "v": 1}),
            CF_SENML_JSON,
            BAD_REQUEST,
            "time_too_old",
        ),
        (
            pack({"bn": "urn:imei:1:", "n": "pm25", "v": 1}),
            CF_SENML_JSON,
            FORBIDDEN,
            "unknown_device",
        ),
        (b"[" + b" " * 1100 + b"]", CF_SENML_JSON, TOO_LARGE, "too_large"),
        (b"{}", 50, UNSUPPORTED_FORMAT, "unsupported_format"),
        (b"[]", None, UNSUPPORTED_FORMAT, "unsupported_format"),
    ],
)
def test_refusals(payload: bytes, cf: int | None, answer: str, reason: str) -> None:
    with pytest.raises(UplinkRefused) as info:
        INTAKE.readings_of_uplink(payload, cf, NOW)
    assert (info.value.answer, info.value.reason) == (answer, reason)
    assert str(info.value)


def test_one_bad_device_refuses_the_whole_uplink() -> None:
    payload = pack(
        {"bn": f"{AIR}:", "n": "pm25", "v": 1},
        {"bn": "urn:imei:2:", "n": "pm25", "v": 1},
    )
    with pytest.raises(UplinkRefused) as info:
        INTAKE.readings_of_uplink(payload, CF_SENML_JSON, NOW)
    assert info.value.answer == FORBIDDEN


def test_radio_figures_become_health_readings() -> None:
    reading = INTAKE.health_reading(
        AIR, NOW, {"rsrp": -95.0, "snr": 7.0, "ecl": 1.0, "rssi": -80.0, "uplinks": -5.0}, NOW
    )
    assert reading is not None and reading.values == {"rsrp": -95.0, "snr": 7.0, "ecl": 1.0}
    with pytest.raises(UplinkRefused):
        INTAKE.health_reading("urn:imei:3", NOW, {"rsrp": -95.0}, NOW)


@pytest.mark.parametrize(
    ("payload", "cf"),
    [
        (b'[{"n":"x"}]', CF_SENML_JSON),
        (b'  \n[{"n":"x"}]', CF_SENML_JSON),
        (encode_values(AIR, NOW, {"pm25": 1.0}, CF_SENML_CBOR), CF_SENML_CBOR),
        (b"\xa1\x00", None),
        (b"", None),
    ],
)
def test_serial_payload_format_is_sniffed(payload: bytes, cf: int | None) -> None:
    assert content_format_of(payload) == cf
