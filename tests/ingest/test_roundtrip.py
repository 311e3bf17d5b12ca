"""Envelopes through real Mosquitto into real influxd, read back with raw ``/query``."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from citysense.config import Settings
from citysense.envelope import encode_batch
from citysense.model import Batch, Reading
from ingest.cli import dead_letters
from ingest.deadletters import FILENAME, PAYLOAD_MAX, DeadLetterStore
from ingest.pipeline import DeadLetter
from tests.ingest.gateway_double import (
    BASE_T,
    GatewayDouble,
    expected_readings,
    ingest_settings,
    ingestor_thread,
    make_batch,
    stored_readings,
)
from tests.servers import InfluxServer, MosquittoServer, free_port, wait_until
from timeseries.schema import SQLITE_FILENAME


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
    "bad_version": json.dumps({"v": 2, "gateway": "gw-test-01", "seq": 99}).encode(),
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
    # kept truncated, with the full length and digest
    big = by_reason["too_large"]
    assert big.truncated and big.payload == POISON["too_large"][:PAYLOAD_MAX]
    assert big.size == len(POISON["too_large"])
    assert big.digest == hashlib.sha256(POISON["too_large"]).hexdigest()
    assert by_reason["gateway_mismatch"].topic == "citysense/v1/gw-test-01/up"
    wrong = json.loads(by_reason["wrong_type"].payload)
    assert wrong["seq"] == 100 and wrong["reading"]["values"]["vehicle_count"] is True
    # The batch with two bad readings is confirmed: each reading is stored or dead-lettered;
    # so is an undecodable envelope that plainly carries this gateway's seq (v:2), so that
    # its gateway stops re-sending it.
    assert {100, 99} <= gw.confirmed
    assert by_reason["bad_version"].seq == 99


def test_embedded_store_and_metrics(mosquitto: MosquittoServer, tmp_path: Path) -> None:
    """Without --influx the readings go to the embedded SQLite store (the general path)."""
    port = free_port()
    settings = ingest_settings(
        mosquitto.url, None, tmp_path / "state", metrics_bind=f"127.0.0.1:{port}"
    )
    batches = [make_batch("gw-test-01", seq, 5) for seq in range(1, 11)]
    gw = GatewayDouble(mosquitto.port)
    try:
        with ingestor_thread(settings):
            for b in batches:
                gw.publish(b)
            gw.publish_raw(b"garbage")
            gw.wait_all_confirmed(30)
            wait_until(
                lambda: (
                    "malformed" in _scrape(port)
                    and "citysense_ingest_in_flight_messages 0" in _scrape(port)
                ),
                30,
                "the dead letter counted and every message acknowledged",
            )
            metrics = _scrape(port)
    finally:
        gw.close()
    db = sqlite3.connect(tmp_path / "state" / SQLITE_FILENAME)
    try:
        rows = db.execute(
            "SELECT device, t, value FROM samples WHERE metric = 'vehicle_count' ORDER BY device, t"
        ).fetchall()
    finally:
        db.close()
    assert sorted(rows) == expected_readings(batches)
    values = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line and not line.startswith("#")
    }
    assert values["citysense_ingest_messages_total"] == 11
    assert values["citysense_ingest_readings_written_total"] == 50
    assert values['citysense_ingest_dead_letters_total{reason="malformed"}'] == 1
    assert values["citysense_ingest_write_seconds_count"] >= 1
    assert values["citysense_ingest_in_flight_messages"] == 0


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        return str(r.read().decode())


def test_mqtt_311_session(
    mosquitto: MosquittoServer, influx_db: InfluxServer, tmp_path: Path
) -> None:
    """The MQTT 3.1.1 fallback: persistent session, manual acks, the broker's window."""
    settings = ingest_settings(mosquitto.url, influx_db, tmp_path / "state")
    batches = [make_batch("gw-test-01", seq, 5) for seq in range(1, 51)]
    gw = GatewayDouble(mosquitto.port)
    try:
        with ingestor_thread(settings, protocol=mqtt.MQTTv311):
            for b in batches:
                gw.publish(b)
            gw.wait_all_confirmed(30)
    finally:
        gw.close()
    assert sorted(stored_readings(influx_db)) == expected_readings(batches)


def test_dead_letters_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = DeadLetterStore(tmp_path / FILENAME)
    try:
        store.add([DeadLetter("malformed", "not valid JSON", "citysense/v1/gw-1/up", b"{x")], 1000)
        store.add(
            [DeadLetter("out_of_range", "pm25: 5000", "citysense/v1/gw-1/up", b"{}", "gw-1", 7)],
            2000,
        )
    finally:
        store.close()
    assert dead_letters(Settings(state_dir=str(tmp_path), limit=1)) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "2 dead letter(s): malformed 1, out_of_range 1"
    assert "out_of_range  citysense/v1/gw-1/up gateway=gw-1 seq=7" in out
    assert "1970-01-01T00:00:02.000Z" in out
    assert "malformed  citysense" not in out  # --limit 1: the newest only
    assert dead_letters(Settings(state_dir=str(tmp_path / "none"))) == 0
    assert "no dead letters" in capsys.readouterr().out


def test_a_resent_batch_is_counted_once(mosquitto: MosquittoServer, tmp_path: Path) -> None:
    """A re-send that arrives while its first copy is still being written is written again
    (same keys: stored once), and the count of readings stored says so: distinct readings,
    with the rewrites counted apart."""
    port = free_port()
    settings = ingest_settings(
        mosquitto.url,
        None,
        tmp_path / "state",
        metrics_bind=f"127.0.0.1:{port}",
        write_max_delay=1.0,
    )
    batches = [make_batch("gw-test-01", seq, 5) for seq in range(1, 4)]
    gw = GatewayDouble(mosquitto.port)
    try:
        with ingestor_thread(settings):
            for b in batches:
                gw.publish(b)
                gw.publish(b)  # re-sent before the first copy is stored
            gw.wait_all_confirmed(30)
            wait_until(
                lambda: "citysense_ingest_in_flight_messages 0" in _scrape(port),
                30,
                "every message acknowledged",
            )
            metrics = _scrape(port)
    finally:
        gw.close()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line and not line.startswith("#")
    }
    assert values["citysense_ingest_messages_total"] == 6
    assert values["citysense_ingest_readings_written_total"] == 15
