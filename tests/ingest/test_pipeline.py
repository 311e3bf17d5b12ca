"""The pure pipeline: envelope -> points and dead letters; seq bookkeeping."""

from __future__ import annotations

import json

import pytest

from citysense.envelope import encode_batch
from citysense.model import Batch, Reading
from ingest.pipeline import SeqTracker, process_message
from timeseries.lineprotocol import LineFastPath
from timeseries.schema import Point

NOW = 1764000000000
TOPIC = "citysense/v1/gw-1/up"


def _reading(**kw: object) -> Reading:
    values: dict[str, object] = {
        "device": "urn:imei:1",
        "kind": "air_station",
        "district": "zhengdong",
        "site": "ruyi",
        "t": NOW - 1000,
        "values": {"pm25": 35.2, "battery": 90},
    }
    values.update(kw)
    return Reading(**values)  # type: ignore[arg-type]


def _payload(*readings: Reading, gateway: str = "gw-1", seq: int = 5) -> bytes:
    return encode_batch(Batch(gateway, seq, NOW, readings))


def test_valid_batch_maps_each_domain_to_a_point() -> None:
    out = process_message(TOPIC, _payload(_reading()), NOW)
    tags = ("urn:imei:1", "air_station", "zhengdong", "ruyi", "gw-1")
    assert out.points == [
        Point("environment", tags, {"pm25": 35.2}, NOW - 1000),
        Point("device_health", tags, {"battery": 90.0}, NOW - 1000),
    ]
    assert type(out.points[1].fields["battery"]) is float
    assert (out.topic_gateway, out.seq, out.readings, out.dead) == ("gw-1", 5, 1, [])


@pytest.mark.parametrize(
    ("payload", "reason", "seq"),
    [
        (b"\xff\xfe", "malformed", None),
        (b"[1,2]", "malformed", None),
        (b'{"v":1,"gateway":"gw-1","seq":1,"sent":1,"readings":[1]}', "bad_field", 1),
        (b'{"v":2,"gateway":"gw-1","seq":1,"sent":1,"readings":[]}', "bad_version", 1),
        (b'{"v":1,"gateway":"gw-1","seq":1,"sent":NaN,"readings":[]}', "malformed", 1),
        (b"x" * (300 * 1024), "too_large", None),
    ],
)
def test_undecodable_envelopes_are_dead_letters(
    payload: bytes, reason: str, seq: int | None
) -> None:
    out = process_message(TOPIC, payload, NOW)
    assert out.points == [] and out.seq == seq  # confirmed when its seq is plain to see
    assert [(d.reason, d.payload, d.topic) for d in out.dead] == [(reason, payload, TOPIC)]


def test_undecodable_envelope_of_this_gateway_is_confirmed_by_seq() -> None:
    payload = b'{"v":1,"gateway":"gw-1","seq":12,"sent":1,"readings":[{"t":"x"}]}'
    out = process_message(TOPIC, payload, NOW)
    assert out.seq == 12 and out.points == []
    assert [(d.reason, d.seq) for d in out.dead] == [("bad_field", 12)]
    other = payload.replace(b'"gw-1"', b'"gw-2"')
    assert process_message(TOPIC, other, NOW).seq is None


def test_gateway_must_match_topic_and_is_not_confirmed() -> None:
    out = process_message("citysense/v1/gw-2/up", _payload(_reading()), NOW)
    assert out.points == [] and out.seq is None
    assert [d.reason for d in out.dead] == ["gateway_mismatch"]


def test_bad_topic() -> None:
    out = process_message("elsewhere/up", b"{}", NOW)
    assert [d.reason for d in out.dead] == ["bad_topic"]


@pytest.mark.parametrize(
    ("reading", "reason"),
    [
        (_reading(values={"pm25": 5000.0}), "out_of_range"),
        (_reading(values={"pm25": True}), "wrong_type"),
        (_reading(values={"occupied": True}), "metric_not_for_kind"),
        (_reading(values={"nonsense": 1.0}), "unknown_metric"),
        (_reading(kind="toaster"), "unknown_kind"),
        (_reading(t=NOW + 3_600_000), "time_in_future"),
        (_reading(t=NOW - 8 * 24 * 3_600_000), "time_too_old"),
    ],
)
def test_invalid_reading_is_dead_lettered_alone(reading: Reading, reason: str) -> None:
    good = _reading(device="urn:imei:2")
    out = process_message(TOPIC, _payload(reading, good), NOW)
    assert [p.tags[0] for p in out.points] == ["urn:imei:2", "urn:imei:2"]
    assert out.readings == 1 and out.seq == 5  # the batch is still confirmed
    (letter,) = out.dead
    assert letter.reason == reason
    kept = json.loads(letter.payload)
    assert kept["seq"] == 5 and kept["index"] == 0 and kept["reading"]["device"] == "urn:imei:1"


def test_seq_tracker_counts_gaps_and_repeats_and_knows_stored_batches() -> None:
    t = SeqTracker()
    assert t.observe("gw", 1, 11) is False
    t.stored("gw", 1, 11)
    assert t.observe("gw", 2, 22) is False
    assert t.observe("gw", 5, 55) is False
    assert t.gaps == 2
    assert t.observe("gw", 1, 11) is True  # re-sent byte for byte after storage: skip
    assert t.observe("gw", 1, 99) is False  # same seq, other content: write it again
    assert t.repeats == 2
    assert t.observe("other", 7, 1) is False and t.gaps == 2


def test_seq_tracker_is_bounded() -> None:
    t = SeqTracker(capacity=10)
    for seq in range(1, 100):
        t.stored("gw", seq, seq)
    assert t.observe("gw", 1, 1) is False
    assert t.observe("gw", 99, 99) is True


def test_huge_integer_is_dead_lettered_not_a_crash() -> None:
    body = json.loads(_payload(_reading()))
    body["readings"][0]["values"]["pm25"] = 10**400
    payload = json.dumps(body).encode()
    assert LineFastPath().lines("gw-1", payload, NOW) is None
    out = process_message(TOPIC, payload, NOW)
    # the reading is refused on its own, with its reason, like any other invalid value
    assert out.points == [] and [d.reason for d in out.dead] == ["not_finite"]
    assert b'"index":0' in out.dead[0].payload
