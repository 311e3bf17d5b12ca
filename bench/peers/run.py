"""Drive one ingest consumer -- a peer or citysense -- with a bounded load, and count.

For each measurement: a fresh Mosquitto (the project's settings, so no queued message or
persistent session carries over from the previous consumer), one database of its own on the
shared influxd, the consumer started as a subprocess and proven ready by a probe reading that
must reach influxd, then the bare-socket QoS 1 publisher sends the same pre-generated
envelopes to every consumer. The clock runs from the first publish until influxd has accepted
every reading (its ``writePointsOk`` counter, cheap to poll) or the time limit; then one
``count()`` query proves how many distinct readings were stored -- zero loss means all of them.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

from bench.harness import (
    ROOT,
    WORK_DIR,
    InfluxServer,
    MosquittoServer,
    cpu_seconds,
    free_port,
    influx_count,
    influx_points_written,
    mqttload_pub_command,
    python_command,
)
from bench.peers import nodered
from citysense.envelope import encode_batch
from citysense.model import Batch, Reading
from tests.servers import stop_process

log = logging.getLogger(__name__)

#: Builds the consumer's command lines (one per process) for a broker, an influxd and a db.
CommandFactory = Callable[[MosquittoServer, InfluxServer, str, Path], list[list[str]]]


@dataclass(frozen=True, slots=True)
class Consumer:
    """A consumer to measure: its name, how to start it, whether py-spy can profile it."""

    key: str
    name: str
    commands: CommandFactory
    python: bool = True


@dataclass(frozen=True, slots=True)
class Measurement:
    """What one consumer did with one load."""

    key: str
    name: str
    per_message: int
    offered: int  #: readings in the load
    published: int  #: readings the broker acknowledged to the publisher
    written: int  #: points influxd accepted in the window (re-writes counted again)
    stored: int  #: distinct readings in influxd at the end
    seconds: float
    complete: bool  #: every offered reading was stored within the time limit
    publish_rate: float  #: readings/s the publisher managed
    cpu_seconds: float  #: the consumer's CPU time in the window
    influx_cpu_seconds: float
    error: str = ""
    profile: Path | None = None
    notes: list[str] = field(default_factory=list)
    #: until_quiet: CPU (consumer + influxd) from the start until all work the load caused
    #: was over (rollups recomputed, with check_rollups; influxd idle again), and the seconds
    #: that took; None when not asked or not reached
    quiet_cpu_seconds: float | None = None
    quiet_seconds: float | None = None

    @property
    def rate(self) -> float:
        """Readings/s stored: all of them over the time taken, else what was written in time."""
        if self.seconds <= 0:
            return 0.0
        if self.complete:
            return self.offered / self.seconds
        return min(self.written, self.stored) / self.seconds

    @property
    def lost(self) -> int | None:
        """Readings published but never stored (known only for a complete run)."""
        return self.published - self.stored if self.complete else None

    def summary(self) -> str:
        if self.error:
            return f"{self.name}: FAILED ({self.error})"
        state = "complete" if self.complete else "time limit reached"
        return (
            f"{self.name}, {self.per_message}/msg: {self.rate:,.0f} readings/s ({state}; "
            f"stored {self.stored:,} of {self.offered:,} in {self.seconds:.1f} s; "
            f"consumer CPU {self.cpu_seconds:.1f} s)"
        )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def citysense_command() -> list[str]:
    script = Path(sys.executable).parent / "citysense"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from citysense.cli import main; sys.exit(main())"]


def _citysense(processes: int, *extra: str) -> CommandFactory:
    def commands(
        broker: MosquittoServer, influx: InfluxServer, db: str, work: Path
    ) -> list[list[str]]:
        return [
            [
                *citysense_command(),
                "ingest",
                "--mqtt",
                broker.url,
                "--influx",
                influx.url,
                "--influx-api",
                "1",
                "--influx-db",
                db,
                "--state-dir",
                str(work / f"state-{i}"),
                "--metrics-bind",
                "off",
                "--client-id",
                f"bench-ingest-{i}",
                "--log-level",
                "WARNING",
                *extra,
            ]
            for i in range(processes)
        ]

    return commands


def _python_peer(module: str) -> CommandFactory:
    def commands(
        broker: MosquittoServer, influx: InfluxServer, db: str, work: Path
    ) -> list[list[str]]:
        return [
            python_command(
                module,
                "--mqtt-port",
                str(broker.port),
                "--influx-url",
                influx.url,
                "--db",
                db,
            )
        ]

    return commands


def _node_red(join: bool) -> CommandFactory:
    def commands(
        broker: MosquittoServer, influx: InfluxServer, db: str, work: Path
    ) -> list[list[str]]:
        return [nodered.prepare(work / "node-red", broker.port, influx.port, free_port(), db, join)]

    return commands


CITYSENSE = Consumer("citysense", "citysense ingest (1 process)", _citysense(1))
CITYSENSE_NO_ROLLUPS = Consumer(
    "citysense-no-rollups", "citysense ingest, rollups off", _citysense(1, "--no-rollups")
)
CITYSENSE_2 = Consumer(
    "citysense-2", "citysense ingest (2 processes, shared subscription)", _citysense(2)
)
NAIVE = Consumer(
    "naive", "naive Python writer (one /write per message)", _python_peer("bench.peers.naive")
)
BATCHED = Consumer(
    "batched",
    "batched Python writer (~5,000 lines per /write)",
    _python_peer("bench.peers.batched"),
)
NODE_RED = Consumer(
    "node-red", "Node-RED + node-red-contrib-influxdb (batch node)", _node_red(False), python=False
)
NODE_RED_JOIN = Consumer(
    "node-red",
    "Node-RED + node-red-contrib-influxdb (join 5,000/1 s → batch node)",
    _node_red(True),
    python=False,
)


def _probe_envelope(seq: int) -> bytes:
    now = int(time.time() * 1000)
    reading = Reading("bench-probe", "air_station", "probe", "probe", now, {"battery": 90.0})
    return encode_batch(Batch("gw-probe", seq, now, (reading,)))


def _wait_ready(
    broker: MosquittoServer,
    influx: InfluxServer,
    db: str,
    procs: Sequence[subprocess.Popen[bytes]],
    timeout: float,
) -> None:
    """Publish probe readings until one is stored: the consumer is subscribed and writing."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-probe")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout
        seq = 0
        while True:
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"consumer exited with {p.returncode} at start")
            seq += 1
            client.publish("citysense/v1/gw-probe/up", _probe_envelope(seq), qos=1)
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                rows = influx.query('SELECT count("battery") FROM "device_health"', db=db)
                if rows["results"][0].get("series"):
                    return
                time.sleep(0.2)
            if time.monotonic() > deadline:
                raise RuntimeError(f"no probe reading stored within {timeout:.0f} s")
    finally:
        client.disconnect()
        client.loop_stop()


def measure(
    consumer: Consumer,
    influx: InfluxServer,
    payload_file: Path,
    messages: int,
    per_message: int,
    seconds: float,
    profile: bool = False,
    until_stored: bool = False,
    until_quiet: bool = False,
    check_rollups: bool = False,
) -> Measurement:
    """Measure ``consumer`` on ``messages`` envelopes of ``per_message`` readings."""
    tag = f"{consumer.key}-{per_message}{'-profile' if profile else ''}"
    db = "bench_" + tag.replace("-", "_")
    # One folder per process: two benchmark runs at once must not share one.
    work = WORK_DIR / f"peer-{tag}-{os.getpid()}"
    offered = messages * per_message
    # Nothing of a previous run may carry over: broker persistence, ingest state, flows.
    shutil.rmtree(work, ignore_errors=True)
    influx.query(f'DROP DATABASE "{db}"', method="POST")
    influx.query(f'CREATE DATABASE "{db}"', method="POST")
    broker = MosquittoServer(work / "mosquitto")
    broker.start()
    procs: list[subprocess.Popen[bytes]] = []
    spy: subprocess.Popen[bytes] | None = None
    profile_path: Path | None = None
    notes: list[str] = []
    failed = True
    try:
        for i, cmd in enumerate(consumer.commands(broker, influx, db, work)):
            with open(work / f"consumer-{i}.log", "wb") as out:
                procs.append(
                    subprocess.Popen(
                        cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=_env()
                    )
                )
        try:
            _wait_ready(broker, influx, db, procs, timeout=120)
        except RuntimeError as exc:
            tail = (work / "consumer-0.log").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"{exc}; log: {tail}") from exc
        base = influx_points_written(influx, db)
        cpu0 = sum(cpu_seconds(p.pid) for p in procs)
        icpu0 = cpu_seconds(influx.pid or 0)
        if profile and consumer.python:
            profile_path = work / "py-spy.txt"
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--pid",
                    str(procs[0].pid),
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "--output",
                    str(profile_path),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        start = time.monotonic()
        pub = subprocess.Popen(
            mqttload_pub_command(broker.port, payload_file, messages, seconds, raw=True),
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=_env(),
        )
        deadline = start + seconds
        complete = False
        error = ""
        written = 0
        while True:
            written = influx_points_written(influx, db) - base
            # until_stored: the consumer writes more than the readings (rollups): count them
            if written >= offered and (not until_stored or influx_count(influx, db) >= offered):
                complete = True
                break
            if any(p.poll() is not None for p in procs):
                error = "consumer exited during the run"
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        elapsed = time.monotonic() - start
        cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu0
        icpu = cpu_seconds(influx.pid or 0) - icpu0
        pub_out, _ = pub.communicate(timeout=seconds + 60)
        pub_stats = json.loads(pub_out.decode().strip().splitlines()[-1])
        published = int(pub_stats["messages"]) * per_message
        publish_rate = published / max(float(pub_stats["seconds"]), 1e-9)
        stored = influx_count(influx, db)
        if complete and stored < offered:
            # writePointsOk counts a re-written point twice: wait for the rest a little.
            wait_end = time.monotonic() + 10
            while stored < offered and time.monotonic() < wait_end:
                time.sleep(0.5)
                stored = influx_count(influx, db)
            if stored < offered:
                complete = False
                notes.append(f"writePointsOk reached {offered:,} but only {stored:,} distinct")
        quiet: tuple[float, float] | None = None
        if until_quiet and complete:
            # the rollups done (when asked), then influxd's own after-work (its cache
            # snapshots and compactions of what was written) over as well
            if not check_rollups or rollups_settled(influx, db, deadline + 120):
                pids = [p.pid for p in procs] + [influx.pid or 0]
                wait_for_idle(pids, time.monotonic() + 120)
                c_cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu0
                i_cpu = cpu_seconds(influx.pid or 0) - icpu0
                quiet = (c_cpu + i_cpu, time.monotonic() - start)
                notes.append(f"until quiet: consumer {c_cpu:.2f} s, influxd {i_cpu:.2f} s CPU")
            else:
                notes.append("rollups still dirty at the time limit")
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(30)
        failed = bool(error)
        return Measurement(
            consumer.key,
            consumer.name,
            per_message,
            offered,
            published,
            written,
            stored,
            elapsed,
            complete,
            publish_rate,
            cpu,
            icpu,
            error,
            profile_path,
            notes,
            quiet[0] if quiet else None,
            quiet[1] if quiet else None,
        )
    except Exception as exc:
        log.exception("measuring %s failed", consumer.name)
        return Measurement(
            consumer.key,
            consumer.name,
            per_message,
            offered,
            0,
            0,
            0,
            0.0,
            False,
            0.0,
            0.0,
            0.0,
            str(exc)[:600],
        )
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait(10)
        for p in procs:
            stop_process(p, 20.0)
        broker.stop()
        with contextlib.suppress(Exception):
            influx.query(f'DROP DATABASE "{db}"', method="POST")
        if not profile and not failed:
            shutil.rmtree(work, ignore_errors=True)  # kept when it failed: its logs tell why


def wait_for_idle(pids: list[int], deadline: float, busy_s: float = 0.03) -> bool:
    """Wait until ``pids`` together use under ``busy_s`` CPU seconds in a second."""
    before = sum(cpu_seconds(p) for p in pids)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = sum(cpu_seconds(p) for p in pids)
        if now - before < busy_s:
            return True
        before = now
    return False


def rollups_settled(influx: InfluxServer, db: str, deadline: float) -> bool:
    """Wait until every rollup mark in ``db`` is done (the marks read as the worker reads
    them); False at ``deadline`` (monotonic)."""
    from timeseries.rollup import MarkView

    view = MarkView()
    while time.monotonic() < deadline:
        now_ms = int(time.time() * 1000)
        body = influx.query(";".join(view.statements(now_ms, whole=True)), db=db)
        view.update(body["results"], now_ms)
        if view.marks and not view.dirty:
            return True
        time.sleep(0.2)
    return False


def summarize_profile(path: Path, top: int = 15) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, num = line.rpartition(" ")
        if not num.isdigit():
            continue
        count = int(num)
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        # The thread name comes first in py-spy's raw output; keep only code frames.
        frames = [f for f in frames if "(" in f]
        if not frames:
            continue
        total += count
        self_counts[_short(frames[-1])] += count
        for f in {_short(f) for f in frames}:
            incl_counts[f] += count
    if not total:
        return "(no samples)"
    lines = [f"{total:,} samples.", "", "| self | function |", "|---|---|"]
    for func, n in self_counts.most_common(top):
        lines.append(f"| {n / total:.1%} | `{func}` |")
    lines += ["", "| inclusive | function |", "|---|---|"]
    # The entry chains (CLI, asyncio.run, the event loop, thread start-up) hold every sample
    # of their thread: leave them out.
    shown = [(f, n) for f, n in incl_counts.most_common() if not f.startswith(_ENTRY)]
    for func, n in shown[: top + 5]:
        lines.append(f"| {n / total:.1%} | `{func}` |")
    return "\n".join(lines)


_ENTRY = (
    "<module> ",
    "console (",
    "main (cli/",
    "run (ingest/cli.py",
    "run (asyncio/",
    "Runner.run ",
    "BaseEventLoop.",
    "Handle._run ",
    "Thread.",
    "Client.loop_forever ",
    "Client._thread_main ",
)


def _short(frame: str) -> str:
    """``func (path/to/module.py:12)`` -> ``func (module.py)`` (one entry per function)."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else file
    return f"{name} ({short})"
