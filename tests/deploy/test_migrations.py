"""Schema versions: databases written by citysense 0.1.0 (fixtures in fixtures/0.1.0, made by
fixtures/make_0_1_0.py with that version's code) open with today's code, migrate, and every
row in them is delivered; a database from a newer version is refused, exit 2, untouched."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from citysense.migrate import (
    Migration,
    SchemaTooNewError,
    header_version,
    migrate,
    refuse_newer,
)
from edge.outbox import MIGRATIONS as OUTBOX_MIGRATIONS
from ingest.deadletters import MIGRATIONS as DEAD_LETTER_MIGRATIONS
from ingest.deadletters import DeadLetterStore
from tests.edge import gateway as harness
from tests.servers import ROOT, MosquittoServer, wait_until
from timeseries.sqlite_store import MIGRATIONS as STORE_MIGRATIONS
from timeseries.sqlite_store import SqliteWriter

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "0.1.0"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


def copy_fixture(name: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    shutil.copy(FIXTURES / name, target)
    assert header_version(target) == 0  # as 0.1.0 left it: no version
    return target


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
    db.close()
    return version


def test_the_0_1_0_outbox_is_migrated_and_every_reading_and_command_delivered(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    settings = harness.edge_settings(tmp_path, mqtt_url=mosquitto.url)
    copy_fixture("outbox.db", Path(settings.state_dir))
    expected = {(d, m, t) for d, m, t, _ in EXPECTED["outbox.db"]["readings"]}
    with harness.ingestor(mosquitto.url) as ing, harness.GatewayThread(settings):
        wait_until(lambda: ing.keys >= expected, 60, "every reading of the 0.1.0 outbox")
        # the seq counter went on where 0.1.0 left it: batches 1 and 3 re-sent, then 4, ...
        assert 1 in ing.seqs() and 3 in ing.seqs() and 2 not in ing.seqs()
        assert min(s for s in ing.seqs() if s not in (1, 3)) == EXPECTED["outbox.db"]["next_seq"]
        # the downlink queue: each device gets its command in the answer to its next uplink
        fresh: set[tuple[str, str, int]] = set()
        for cid, device, command in EXPECTED["outbox.db"]["commands"]:
            now = int(time.time() * 1000)
            answer = harness.post_uplink(
                harness.coap_port(settings), harness.uplink_payload(device, now)
            )
            assert cid.encode() in answer.payload and command.encode() in answer.payload
            fresh |= {(device, "pm25", now), (device, "pm10", now)}
        wait_until(lambda: ing.keys >= fresh, 30, "the new uplinks")
    assert ing.keys == expected | fresh
    assert user_version(Path(settings.state_dir) / "outbox.db") == len(OUTBOX_MIGRATIONS)


def test_the_0_1_0_dead_letters_are_migrated_and_all_listed(tmp_path: Path) -> None:
    path = copy_fixture("deadletters.sqlite3", tmp_path)
    store = DeadLetterStore(path, max_bytes=64 * 2**20, max_age_ms=10**15)
    try:
        kept = [(d.reason, d.topic, d.size) for d in reversed(store.recent(100))]
        assert kept == [tuple(x) for x in EXPECTED["deadletters.sqlite3"]["letters"]]
        assert all(not d.truncated and d.digest is None for d in store.recent(100))
        assert store.evictions() == {}
    finally:
        store.close()
    assert user_version(path) == len(DEAD_LETTER_MIGRATIONS) == 2
    listing = subprocess.run(
        [sys.executable, "-m", "citysense", "ingest", "dead-letters", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert listing.returncode == 0 and listing.stdout.startswith("3 dead letter(s)"), listing


def test_the_0_1_0_embedded_store_is_migrated_and_every_sample_kept(tmp_path: Path) -> None:
    path = copy_fixture("timeseries.sqlite3", tmp_path)
    writer = SqliteWriter(path)
    try:
        assert user_version(path) == len(STORE_MIGRATIONS)
    finally:
        asyncio.run(writer.close())
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT metric, device, t, value FROM samples").fetchall()
    db.close()
    assert sorted(rows) == sorted(tuple(x) for x in EXPECTED["timeseries.sqlite3"]["samples"])


def make_newer(path: Path, version: int = 99) -> str:
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {version}")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def untouched(path: Path, digest: str) -> bool:
    siblings = {p.name for p in path.parent.iterdir()}
    return hashlib.sha256(path.read_bytes()).hexdigest() == digest and siblings == {path.name}


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("outbox.db", ["edge", "--metrics-bind", "off", "--coap", "127.0.0.1:0"]),
        ("deadletters.sqlite3", ["ingest", "dead-letters"]),
        ("timeseries.sqlite3", ["ingest", "--metrics-bind", "off"]),
    ],
)
def test_a_database_from_a_newer_version_is_refused_untouched(
    tmp_path: Path, name: str, command: list[str]
) -> None:
    state = tmp_path / "state"
    path = copy_fixture(name, state)
    digest = make_newer(path)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "citysense",
            *command,
            "--state-dir",
            str(state),
            "--log-format",
            "text",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "CITYSENSE_MQTT": "mqtt://127.0.0.1:9"},
    )
    assert result.returncode == 2, result.stderr
    assert "schema version 99, newer than this citysense knows" in result.stderr
    assert "Traceback" not in result.stderr
    assert untouched(path, digest)


def test_migrations_run_in_order_in_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "x.sqlite3"
    steps = (
        Migration(1, "t", ("CREATE TABLE t (a INTEGER)",)),
        Migration(2, "u", ("ALTER TABLE t ADD COLUMN b TEXT", "INSERT INTO t VALUES (1, 'x')")),
    )
    db = sqlite3.connect(path, isolation_level=None)
    assert migrate(db, path, "test", steps[:1]) == 0
    assert migrate(db, path, "test", steps) == 1
    assert db.execute("SELECT * FROM t").fetchall() == [(1, "x")]
    # a failing step leaves everything as it was
    broken = (*steps, Migration(3, "bad", ("INSERT INTO t VALUES (2, 'y')", "SYNTAX ERROR")))
    with pytest.raises(sqlite3.OperationalError):
        migrate(db, path, "test", broken)
    assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    db.close()
    with pytest.raises(SchemaTooNewError):
        refuse_newer(path, "test", steps[:1])
    with pytest.raises(ValueError):
        migrate(sqlite3.connect(":memory:"), path, "test", (steps[1],))
