"""The quality checks in a process of their own (:mod:`dashboard_api.quality_process`): the
same findings as in the API's process, over the embedded store and real influxd; a child
that dies is started again; a storage outage comes back as retryable; nothing outlives
``close``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from citysense.config import Settings
from citysense.errors import RetryableError
from dashboard_api.latest_cache import RollupBackedReader, open_rollup_reads
from dashboard_api.quality_checks import Findings, read_findings
from dashboard_api.quality_process import NICE, QualityProcess
from tests.dashboard_api.test_quality_api import HOUR, T0, covered_city
from tests.servers import InfluxServer, free_port
from timeseries.query import Reader, open_reader

NOW = T0 + 52 * HOUR  # in the haze, the first station's inlet covered for 22 h


async def in_this_process(settings: Settings, now: int) -> Findings:
    """What the API's process finds itself: the same reader stack the child opens."""
    async with open_reader(settings) as reader:
        rollups = open_rollup_reads(settings, reader, lambda: now / 1000)
        source: Reader = reader
        if rollups is not None:
            await rollups.refresh()
            source = RollupBackedReader(reader, rollups)
        try:
            return await read_findings(source, now)
        finally:
            if rollups is not None:
                await rollups.partial.aclose()


@pytest.mark.parametrize("storage", ["sqlite", "influxql"])
def test_the_child_finds_what_the_api_process_finds(
    tmp_path: Path, storage: str, request: pytest.FixtureRequest
) -> None:
    changes: dict[str, object] = {}
    if storage == "influxql":
        db: InfluxServer = request.getfixturevalue("influx_db")
        changes = {"influx": db.url, "influx_db": db.db, "influx_api": "1"}
    settings, devices = covered_city(tmp_path, **changes)
    process = QualityProcess(settings)
    try:
        found, tags, saw = asyncio.run(process(NOW))
        assert process.pid is not None and process.pid != os.getpid()
        # background work: nicer than the API
        assert os.getpriority(os.PRIO_PROCESS, process.pid) == os.getpriority(
            os.PRIO_PROCESS, 0
        ) + min(NICE, 19 - os.getpriority(os.PRIO_PROCESS, 0))
        assert saw is True
        assert any(d == devices[0].device and f.reason == "tamper_suspect" for d, f in found)
        assert set(tags) == {d for d, _ in found}  # only the tags of the devices found
        assert (found, tags, saw) == asyncio.run(in_this_process(settings, NOW))
        again = asyncio.run(process(NOW))  # the same child, asked again
        assert again == (found, tags, saw) and process.started == 1
    finally:
        process.close()


def test_a_child_that_dies_is_started_again(tmp_path: Path) -> None:
    settings, _ = covered_city(tmp_path)
    process = QualityProcess(settings)
    try:
        first = asyncio.run(process(NOW))
        # dead between evaluations: the next one starts a new child and answers
        proc = process._proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        assert asyncio.run(process(NOW)) == first and process.started == 2
        # dies during an evaluation: retryable, and the one after starts a new child
        pid = process.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # it cannot answer what is asked now
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            asked = pool.submit(asyncio.run, process(NOW))
            time.sleep(0.5)
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(RetryableError, match="ended"):
                asked.result(30)
        assert asyncio.run(process(NOW)) == first
        assert process.started == 3 and process.pid not in (pid, proc.pid)
        assert "citysense_api_quality_process_starts_total 3\n" in process.exposition()
    finally:
        process.close()


def test_storage_down_is_retryable_and_close_ends_the_child(tmp_path: Path) -> None:
    settings = Settings(
        state_dir=str(tmp_path / "state"),
        influx=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        influx_db="citysense",
        influx_api="1",
        influx_timeout=2.0,
    )
    process = QualityProcess(settings)
    with pytest.raises(RetryableError):
        asyncio.run(process(NOW))
    proc = process._proc
    assert proc is not None and proc.is_alive()  # an outage does not end the child
    process.close()
    assert not proc.is_alive() and process.pid is None


def test_a_hung_evaluation_is_stopped(tmp_path: Path) -> None:
    settings, _ = covered_city(tmp_path)
    process = QualityProcess(settings)
    asyncio.run(process(NOW))
    pid = process.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # the child stops answering
    process.timeout_s = 0.5
    try:
        with pytest.raises(RetryableError, match="took over"):
            asyncio.run(process(NOW))
        assert process.pid is None  # stopped; started again at the next evaluation
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone once it was killed
            os.kill(pid, signal.SIGCONT)
        process.close()
    process.timeout_s = 60
    assert asyncio.run(process(NOW))[2] is True and process.started == 2
    process.close()
