"""Envelopes through real Mosquitto into real influxd, read back with raw ``/query``."""

from __future__ import annotations

import json
from pathlib import Path

from citysense.envelope import encode_batch
from citysense.model import Batch, Reading
from ingest.deadletters import FILENAME, DeadLetterStore
from tests.ingest.gateway_double import (
    BASE_T,
    GatewayDouble,
    expected_readings,
    ingest_settings,
    ingestor_thread,
    make_batch,
    stored_readings,
)
from tests.servers import InfluxServer, MosquittoServer, wait_until


def test_envelopes_become_exact_points(
    mosquitto: MosquittoServer, influx_db: InfluxServer, tmp_path: Path
) -> None:
    settings = ingest_settings(mosquitto.url, influx_db, tmp_path / "state")
    air = Reading(
        device="urn:imei:490154203237518",
        kind="air_station",
        district="zhengdong",
        site="ruyi-lake",
        t=BASE_T + 123,
        values={"pm25": 35.2, "pm10": 61, "battery": 87.5, "rsrp": -97},
    )
    parking = Reading(
        device="urn:imei:490154203237519",
        kind="parking_sensor",
        district="jinshui",
        site="p-1",
        t=BASE_T + 456,
        values={"occupied": True},
    )
    gw = GatewayDouble(mosquitto.port, "gw-zhengdong-01")
    try:
        with ingestor_thread(settings):
            gw.publish(Batch("gw-zhengdong-01", 1, BASE_T + 1000, (air, parking)))
            gw.wait_all_confirmed(30)
    finally:
        gw.close()
    env = influx_db.query('SELECT * FROM "environment"', db=influx_db.db)["results"][0]
    series = env["series"][0]
    row = dict(zip(series["columns"], series["values"][0], strict=True))
    assert row == {
        "time": BASE_T + 123,
        "device": "urn:imei:490154203237518",
        "kind": "air_station",
        "district": "zhengdong",
        "site": "ruyi-lake",
        "gateway": "gw-zhengdong-01",
        "pm25": 35.2,
        "pm10": 61.0,
    }
    health = influx_db.rows('SELECT "battery", "rsrp", "device" FROM "device_health"')
    assert health == [[BASE_T + 123, 87.5, -97.0, "urn:imei:490154203237518"]]
    traffic = influx_db.rows('SELECT "occupied", "site" FROM "traffic"')
    assert traffic == [[BASE_T + 456, True, "p-1"]]
    # Field types are the catalog's: pm10 was sent as an integer and stored as a float.
    keys = influx_db.query('SHOW FIELD KEYS FROM "environment"', db=influx_db.db)
    types = dict(keys["results"][0]["series"][0]["values"])
    assert types == {"pm10": "float", "pm25": "float"}
    bools = influx_db.query('SHOW FIELD KEYS FROM "traffic"', db=influx_db.db)
    assert dict(bools["results"][0]["series"][0]["values"]) == {"occupied": "boolean"}


def test_many_batches_each_reading_once(
    mosquitto: MosquittoServer, influx_db: InfluxServer, tmp_path: Path
) -> None:
    settings = ingest_settings(mosquitto.url, influx_db, tmp_path / "state")
    batches = [make_batch("gw-test-01", seq, 20) for seq in range(1, 201)]
    gw = GatewayDouble(mosquitto.port)
    try:
        with ingestor_thread(settings):
            for b in batches:
                gw.publish(b)
            # The same batches again, as a gateway re-sends: stored once, confirmed again.
            for b in batches[:50]:
                gw.publish(b)
            gw.wait_all_confirmed(60)
    finally:
        gw.close()
    assert sorted(stored_readings(influx_db)) == expected_readings(batches)


POISON = {
    "malformed": b"{not json",
    "bad_version": json.dumps({"v": 2, "gateway": "gw-test-01", "seq": 1}).encode(),
    "too_large": b'{"v":1,"pad":"' + b"x" * (2 * 1024 * 1024) + b'"}',
    "bad_field": json.dumps(
        {"v": 1, "gateway": "gw-test-01", "seq": "7", "sent": 1, "readings": []}
    ).encode(),
}


def test_poison_messages_are_dead_lettered_and_do_not_block(
    mosquitto: MosquittoServer, influx_db: InfluxServer, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    settings = ingest_settings(mosquitto.url, influx_db, state)
    good = [make_batch("gw-test-01", seq, 3) for seq in range(1, 7)]
    wrong_type = make_batch("gw-test-01", 100, 2)
    body = json.loads(encode_batch(wrong_type))
    body["readings"][0]["values"]["vehicle_count"] = True  # a boolean where a number belongs
    body["readings"][1]["values"]["avg_speed"] = 900.0  # out of range
    gw = GatewayDouble(mosquitto.port)
    try:
        with ingestor_thread(settings):
            for payload, batch in zip(POISON.values(), good, strict=False):
                gw.publish_raw(payload)
                gw.publish(batch)
            gw.publish_raw(json.dumps(body).encode())
            gw.publish(good[4])
            # A batch of another gateway published on this gateway's topic.
            gw.publish_raw(encode_batch(make_batch("gw-other", 1, 1, gw_index=9)))
            gw.publish(good[5])
            gw.wait_all_confirmed(30)
            store = DeadLetterStore(state / FILENAME)
            try:
                wait_until(lambda: sum(store.counts().values()) >= 7, 30, "dead letters")
                counts = store.counts()
                letters = store.recent(100)
            finally:
                store.close()
    finally:
        gw.close()
    assert counts == {
        "malformed": 1,
        "bad_version": 1,
        "too_large": 1,
        "bad_field": 1,
        "wrong_type": 1,
        "out_of_range": 1,
        "gateway_mismatch": 1,
    }
    assert sorted(stored_readings(influx_db)) == expected_readings(good)
    by_reason = {d.reason: d for d in letters}
    assert by_reason["malformed"].payload == b"{not json"
    assert by_reason["too_large"].payload == POISON["too_large"]
    assert by_reason["gateway_mismatch"].topic == "citysense/v1/gw-test-01/up"
    wrong = json.loads(by_reason["wrong_type"].payload)
    assert wrong["seq"] == 100 and wrong["reading"]["values"]["vehicle_count"] is True
    # The batch with two bad readings is confirmed: each reading is stored or dead-lettered.
    assert 100 in gw.confirmed
