"""A database that goes missing while the ingestor runs is an ERROR (its writes wait and go
through once it is back), not an INFO retry. Real influxd."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path

import pytest

from citysense.config import Settings
from ingest.deadletters import DeadLetterStore
from ingest.metrics import IngestMetrics
from ingest.service import Ingestor
from tests.servers import InfluxServer
from timeseries.connection import InfluxTarget, storage_target
from timeseries.influx_v1 import InfluxV1Writer


def test_a_missing_database_is_an_error_and_the_write_waits(
    influxd: InfluxServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    name = "gone_" + uuid.uuid4().hex[:10]
    settings = Settings(influx=influxd.url, influx_db=name, influx_api="1", retry_max_delay=0.2)
    line = f"environment,device=d1,kind=air_station pm25=1.5 {int(time.time() * 1000)}"

    async def main() -> None:
        target = storage_target(settings)
        assert isinstance(target, InfluxTarget)
        writer = InfluxV1Writer(target)
        store = DeadLetterStore(tmp_path / "dead.sqlite3")
        try:
            ingestor = Ingestor(settings, writer, store, IngestMetrics())
            write = asyncio.create_task(ingestor._retrying(writer.write_lines, [line]))
            deadline = time.monotonic() + 15
            while not any(r.levelno == logging.ERROR for r in caplog.records):
                assert time.monotonic() < deadline, "no ERROR about the missing database"
                assert not write.done()
                await asyncio.sleep(0.05)
            influxd.query(f'CREATE DATABASE "{name}"', method="POST")
            result = await asyncio.wait_for(write, 15)
            assert result.written == 1
        finally:
            await writer.close()
            store.close()

    caplog.set_level(logging.DEBUG, logger="ingest.service")
    try:
        asyncio.run(main())
    finally:
        influxd.query(f'DROP DATABASE "{name}"', method="POST")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "database not found" in errors[0], errors
    assert any("reachable again" in r.getMessage() for r in caplog.records)
