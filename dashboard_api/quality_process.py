"""The data-quality checks in a process of their own.

At a city's size an evaluation reads and parses hundreds of thousands of points and runs
numpy over them: about 8 s of CPU at 10,000 devices. In the API's process that work holds the
interpreter while requests wait (``/devices`` went from a median of 23 ms to a p95 of 75 ms
around an evaluation). :class:`QualityProcess` runs :func:`~dashboard_api.quality.read_findings`
in a child process with its own storage reader and rollup view, opened from the same
settings; the API's process keeps the flag table and gets back only the findings and the
tags of the devices found.

* The child is started (``spawn``: no copy of the API's threads or sockets) at the first
  evaluation, at a lower CPU priority than the API, and kept for the next ones; it ends when the API closes its end of the pipe,
  or when the API's process is gone.
* An evaluation that fails in the child comes back as the error it was: a storage outage
  is a :class:`~citysense.errors.RetryableError` to the monitor, as in process.
* A child that dies, or takes longer than ``timeout_s``, is stopped and started again at the
  next evaluation; the monitor logs it and tries again at its interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import threading
from multiprocessing.connection import Connection
from typing import Any

from citysense import logs, prometheus
from citysense.compat.glibc import release_free_memory
from citysense.config import Settings
from citysense.errors import RetryableError
from dashboard_api.latest_cache import RollupBackedReader, open_rollup_reads
from dashboard_api.quality_checks import Findings, read_findings
from timeseries.query import Reader, open_reader

log = logging.getLogger(__name__)

#: the longest an evaluation may take before its process is stopped
TIMEOUT_S = 600.0
#: how much nicer than the API the checks' process runs (background work)
NICE = 10


class QualityProcess:
    """A :data:`~dashboard_api.quality_checks.FindingsSource` that evaluates in a child
    process."""

    def __init__(self, settings: Settings, timeout_s: float = TIMEOUT_S) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self.started = 0  #: child processes started (a restart after a failure counts)
        self._proc: Any = None  # multiprocessing.context.SpawnProcess
        self._conn: Connection | None = None
        self._lock = threading.Lock()  # one evaluation at a time through the pipe

    async def __call__(self, now_ms: int) -> Findings:
        return await asyncio.to_thread(self._evaluate, now_ms)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _evaluate(self, now_ms: int) -> Findings:
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                try:
                    self._start()
                except OSError as exc:  # no process to be had (memory, a task limit)
                    raise RetryableError(
                        f"could not start the quality checks' process: {exc}"
                    ) from None
            conn = self._conn
            assert conn is not None
            try:
                conn.send(now_ms)
                if not conn.poll(self.timeout_s):
                    self._stop(kill=True)
                    raise RetryableError(
                        f"the quality checks took over {self.timeout_s:.0f} s: their process "
                        "was stopped and starts again at the next evaluation"
                    )
                outcome, value = conn.recv()
            except (EOFError, OSError) as exc:
                self._stop()
                raise RetryableError(
                    f"the quality checks' process ended ({exc or type(exc).__name__}): it "
                    "starts again at the next evaluation"
                ) from None
        if outcome == "retry":
            raise RetryableError(value)
        if outcome == "error":
            raise RuntimeError(f"quality checks failed in their process: {value}")
        return value

    def _start(self) -> None:
        self._stop()
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(
            target=serve, args=(theirs, self.settings), name="citysense-quality", daemon=True
        )
        proc.start()
        theirs.close()  # the child's end lives in the child: its exit is our EOF
        self._proc, self._conn = proc, ours
        self.started += 1
        log.info("quality checks run in process %d", proc.pid)

    def _stop(self, kill: bool = False) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()  # the child sees EOF and ends
        if proc is not None:
            proc.join(0 if kill else 5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)

    def exposition(self) -> str:
        """The process's figures for ``/metrics``."""
        return prometheus.render(
            [
                prometheus.counter(
                    "citysense_api_quality_process_starts_total",
                    "Processes started for the data-quality checks (more than one: restarts).",
                    self.started,
                )
            ]
        )

    def close(self) -> None:
        """Stop the child (an evaluation still running in it is abandoned)."""
        with contextlib.suppress(Exception):
            if self._proc is not None and self._proc.is_alive():
                self._proc.terminate()
        self._stop()


def serve(conn: Connection, settings: Settings) -> None:
    """The child: answer each evaluation time sent with its findings, until EOF. It runs
    at a lower priority (:data:`NICE`): on a machine of few cores, requests come first."""
    with contextlib.suppress(OSError):
        os.nice(NICE)
    logs.configure(settings.log_level, settings.log_format)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(_serve(conn, settings))
    finally:
        loop.close()


async def _serve(conn: Connection, settings: Settings) -> None:
    now = [0]
    async with open_reader(settings) as reader:
        rollups = open_rollup_reads(settings, reader, lambda: now[0] / 1000)
        source: Reader = reader if rollups is None else RollupBackedReader(reader, rollups)
        try:
            while True:
                try:
                    now[0] = conn.recv()  # between evaluations, nothing else runs here
                except (EOFError, OSError):
                    return  # the API closed its end, or is gone
                try:
                    if rollups is not None:
                        await rollups.refresh()  # which minutes the rollups lack, now
                    answer: tuple[str, Any] = ("ok", await read_findings(source, now[0]))
                except RetryableError as exc:
                    answer = ("retry", str(exc))
                except Exception as exc:  # sent back whole: the API logs it and goes on
                    log.exception("quality evaluation failed")
                    answer = ("error", f"{type(exc).__name__}: {exc}")
                conn.send(answer)
                del answer
                release_free_memory()  # the evaluation's peak, not kept until the next one
        finally:
            if rollups is not None:
                await rollups.partial.aclose()
