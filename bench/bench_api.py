"""Operator API latency over a week of a 1,000-device city in a real influxd.

Loads ``--devices`` devices (60% air stations, 20% traffic counters, 20% water meters, in 8
districts) reporting every ``--interval`` minutes for ``--days`` days, each uplink also
carrying 4 health metrics, straight into influxd with ``/write``; builds the rollups as the
ingestor's worker would; then runs ``citysense api`` (its own process, loopback) and times
sequential HTTP requests:

* ``latest``: ``/api/v1/environment/latest`` (every air station, 9 metrics, 24 h window);
* ``devices``: ``/api/v1/devices`` (last seen from any reading, radio health);
* ``series``: ``/api/v1/environment/series?metric=pm25&every=1h`` over 7 days, grouped by
  district and ungrouped, and ``every=1d`` over 365 days;
* ``aqi``: ``/api/v1/environment/aqi`` (6 pollutants, hourly means over 24 h by district).

Baselines in the same run: the raw InfluxQL for the same question, timed straight against
influxd's ``/query``. Goals (issue 13): p95 <= 10 ms latest and devices, <= 30 ms series
1 h x 7 d, <= 50 ms series 1 d x 365 d, <= 20 ms aqi, each >= 5x faster than raw.

    python -m bench.bench_api [--quick] [--sizes N,...] [--days D] [--interval MIN] [--ingest]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.harness import (
    RESULTS_PATH,
    WORK_DIR,
    InfluxServer,
    Result,
    Section,
    cpu_seconds,
    free_port,
    load_average,
    now_utc,
    write_results,
)
from citysense.compat.glibc import keep_large_blocks
from citysense.config import Settings
from timeseries.factory import create_writer
from timeseries.rollup import (
    MarkingLineWriter,
    RollupWorker,
    open_rollup_store,
    with_rollup_marks,
)

log = logging.getLogger("bench.api")

DISTRICTS = ("zhongyuan", "erqi", "jinshui", "huiji", "guancheng", "zhengdong", "gaoxin", "jingkai")
HEALTH_FIELDS = 4


def device_lines(
    devices: int, days: float, interval_min: int, end_ms: int
) -> Iterator[tuple[list[str], int]]:
    """Line protocol for the whole load, one uplink round at a time, with its number of
    field values (generated as it is written: 20 M lines would not fit in memory)."""
    rng = random.Random(7)
    step = interval_min * 60_000
    start = end_ms - int(days * 86_400_000)
    fleet = []
    for i in range(devices):
        kind = "air_station" if i % 10 < 6 else "traffic_counter" if i % 10 < 8 else "water_meter"
        district = DISTRICTS[i % len(DISTRICTS)]
        tags = f"device=urn:imei:86{i:013d},kind={kind},district={district},site=s{i % 40},gateway=gw-{i % 4}"
        fleet.append((kind, tags, rng.random() * step))
    t = start
    k = 0
    while t < end_ms:
        lines: list[str] = []
        fields = 0
        hour = (t // 3_600_000) % 24
        diurnal = 1.0 + 0.4 * abs(12 - hour) / 12
        for kind, tags, offset in fleet:
            ts = int(t + offset)
            if ts >= end_ms:
                continue
            r = rng.random()
            if kind == "air_station":
                lines.append(
                    f"environment,{tags} pm25={30 * diurnal + 20 * r:.1f},pm10={60 * diurnal + 30 * r:.1f},"
                    f"no2={40 + 20 * r:.1f},so2={8 + 4 * r:.1f},o3={90 - 30 * r:.1f},co={0.6 + 0.4 * r:.2f},"
                    f"temperature={15 + 10 * r:.1f},humidity={50 + 20 * r:.1f},noise={55 + 10 * r:.1f} {ts}"
                )
                fields += 9
            elif kind == "traffic_counter":
                lines.append(
                    f"traffic,{tags} vehicle_count={int(40 * r)},avg_speed={25 + 30 * r:.1f},occupancy={30 * r:.1f} {ts}"
                )
                fields += 3
            else:
                lines.append(
                    f"utility,{tags} water_flow={0.8 * r:.3f},water_pressure={300 + 50 * r:.0f},leak={'true' if r > 0.999 else 'false'} {ts}"
                )
                fields += 3
            lines.append(
                f"device_health,{tags} battery={90 - k * 1e-4:.1f},rsrp={-90 - 10 * r:.0f},snr={10 * r:.0f},ecl={int(r * 3)} {ts}"
            )
            fields += HEALTH_FIELDS
        yield lines, fields
        t += step
        k += 1


def load_with_rollups(
    influx: InfluxServer, rounds: Iterator[tuple[list[str], int]], size: Size
) -> None:
    """Write the load through the ingestor's writer (dirty marks, the lines it stored kept)
    two requests at a time, and after every ~2 hours of it let the ingestor's rollup worker
    recompute what was written, as it does live; the two phases timed apart."""
    settings = Settings(influx=influx.url, influx_db=influx.db, influx_api="1")

    async def run() -> None:
        writer = with_rollup_marks(await create_writer(settings), settings)
        assert isinstance(writer, MarkingLineWriter)
        store = open_rollup_store(settings, "1", writer.live)
        assert store is not None
        worker = RollupWorker(store, settle_ms=0)
        await worker.run_once()  # the retention policies
        ipid = influx.pid or 0
        try:
            pending: list[str] = []
            for i, (lines, fields) in enumerate(rounds, 1):
                size.points += len(lines)
                size.values += fields
                pending.extend(lines)
                if len(pending) < CHUNK_LINES and i % 12:
                    continue
                c0, i0, t0 = time.process_time(), cpu_seconds(ipid), time.perf_counter()
                for k in range(0, len(pending), 10_000):
                    await asyncio.gather(
                        writer.write_lines(pending[k : k + 5000]),
                        writer.write_lines(pending[k + 5000 : k + 10_000]),
                    )
                c1, i1, t1 = time.process_time(), cpu_seconds(ipid), time.perf_counter()
                await worker.drain(limit_s=1800)
                c2, i2, t2 = time.process_time(), cpu_seconds(ipid), time.perf_counter()
                size.write_s += t1 - t0
                size.write_cpu_s += (c1 - c0) + (i1 - i0)
                size.rollup_s += t2 - t1
                size.rollup_cpu_s += c2 - c1
                size.rollup_influx_cpu_s += i2 - i1
                pending = []
                if i % 144 == 0:  # a day of uplinks at 10 minutes
                    log.info(
                        "%s: %d points written (%.0f s), rolled up (%.0f s)",
                        size.label,
                        size.points,
                        size.write_s,
                        size.rollup_s,
                    )
        finally:
            await store.close()
            await writer.close()
        size.windows = worker.stats.windows_recomputed
        size.from_writes, size.read_back = writer.live.used, writer.live.refused

    asyncio.run(run())


#: lines written before the rollup worker catches up (the lines it keeps are bounded)
CHUNK_LINES = 250_000


def _health(api: httpx.Client) -> int:
    try:
        return api.get("/api/v1/health").status_code
    except httpx.TransportError:  # not listening yet
        return 0


class ApiProcess:
    """``citysense api`` in a process of its own, as deployed (its background work -- the
    latest-value table, rollup marks, quality checks -- competes with no benchmark thread
    for the interpreter)."""

    def __init__(self, influx: InfluxServer, work: Path) -> None:
        self.port = free_port()
        self.work = work
        self.argv = [
            sys.executable, "-m", "citysense", "api",
            "--influx", influx.url, "--influx-db", influx.db, "--influx-api", "1",
            "--bind", f"127.0.0.1:{self.port}", "--rate-limit", "1000000",
            "--state-dir", str(work / "api-state"), "--log-level", "WARNING",
            "--allow-writable-reader",  # the benchmark's influxd runs without auth
            "--influx-timeout", "120",  # priming over 10,000 devices' week takes seconds
            # a city of 6,000 air stations: `latest` is 54,000 values (the default allows
            # 20,000 a query, as an operator of such a city would raise it)
            "--point-limit", "200000",
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> str:
        self.work.mkdir(parents=True, exist_ok=True)
        log_file = open(self.work / "api.log", "wb")
        self.proc = subprocess.Popen(self.argv, stdout=log_file, stderr=subprocess.STDOUT)
        log_file.close()
        return f"http://127.0.0.1:{self.port}"

    def poll(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def output(self) -> str:
        return (self.work / "api.log").read_text(errors="replace")[-2000:]

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_for_quiet(influx: InfluxServer, limit_s: float = 180.0) -> float:
    """Wait (at most ``limit_s``) until influxd uses under 10% of a core over 2 s: its
    compactions after the bulk load would otherwise be measured as query latency."""
    t0 = time.monotonic()
    pid = influx.pid
    if pid is None:
        return 0.0
    while time.monotonic() - t0 < limit_s:
        before = cpu_seconds(pid)
        done = threading.Event()
        done.wait(2.0)  # the measuring interval itself, not a wait for an event
        if (cpu_seconds(pid) - before) / 2.0 < 0.10:
            break
    return time.monotonic() - t0


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return p50, p95


def time_calls(call: Callable[[], None], n: int) -> tuple[float, float]:
    for _ in range(3):
        call()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1000)
    return percentiles(samples)


@dataclass
class Size:
    """One store size: its load and what building its rollups cost."""

    devices: int
    points: int = 0
    values: int = 0
    write_s: float = 0.0
    write_cpu_s: float = 0.0  #: this process and influxd while writing the raw data
    rollup_s: float = 0.0
    rollup_cpu_s: float = 0.0  #: this process (the worker's Python side)
    rollup_influx_cpu_s: float = 0.0  #: influxd while the worker read and wrote
    windows: int = 0
    from_writes: int = 0  #: minutes recomputed from the lines written
    read_back: int = 0  #: minutes recomputed from raw data read back
    p95: dict[str, float] = field(default_factory=dict)

    @property
    def rollup_cpu_per_reading(self) -> float:
        """µs of CPU (worker + influxd) per stored value to build the rollups."""
        return (self.rollup_cpu_s + self.rollup_influx_cpu_s) / max(self.values, 1) * 1e6

    @property
    def label(self) -> str:
        return f"{self.points / 1e6:.1f} M points"


GOALS = {"latest": 10, "devices": 10, "series 1 h": 30, "series 1 d": 50, "aqi": 20}


def measure_size(size: Size, args: argparse.Namespace, section: Section, work: Path) -> None:
    influx = InfluxServer(work / f"influxd-{size.devices}")
    influx.start()
    try:
        end_ms = int(time.time() * 1000)
        rounds = device_lines(size.devices, args.days, args.interval, end_ms)
        load_with_rollups(influx, rounds, size)
        log.info(
            "%s: wrote %d values in %.1f s (CPU %.1f s); rollups of %d minute windows in "
            "%.1f s (CPU: worker %.1f s, influxd %.1f s; %d minutes from the writes, %d read "
            "back)",
            size.label,
            size.values,
            size.write_s,
            size.write_cpu_s,
            size.windows,
            size.rollup_s,
            size.rollup_cpu_s,
            size.rollup_influx_cpu_s,
            size.from_writes,
            size.read_back,
        )
        settle_s = wait_for_quiet(influx)
        raw = httpx.Client(base_url=influx.url, timeout=120)

        def raw_query(q: str) -> Callable[[], None]:
            def call() -> None:
                r = raw.get("/query", params={"db": influx.db, "q": q, "epoch": "ms"})
                r.raise_for_status()

            return call

        now = int(time.time() * 1000)
        day, week, hour = 86_400_000, 7 * 86_400_000, 3_600_000
        env_fields = ("pm25", "pm10", "no2", "so2", "o3", "co", "temperature", "humidity", "noise")
        raw_latest = ";".join(
            f'SELECT last("{f}") AS value FROM "environment" WHERE time >= {now - day}ms '
            f'AND time < {now}ms GROUP BY "device","kind","district","site"'
            for f in env_fields
        )
        raw_devices = ";".join(
            f'SELECT * FROM "{m}" WHERE time >= {now - week}ms AND time < {now + 300_000}ms '
            'GROUP BY "device","kind","district","site" ORDER BY time DESC LIMIT 1'
            for m in ("environment", "traffic", "utility", "device_health")
        )
        week_start = now // hour * hour - week
        raw_series = (
            f'SELECT mean("pm25") AS value FROM "environment" WHERE time >= {week_start}ms AND '
            f'time < {now}ms GROUP BY time(1h), "district" fill(none)'
        )
        year_start = now // day * day - 365 * day
        raw_year = (
            f'SELECT mean("pm25") AS value FROM "environment" WHERE time >= {year_start}ms AND '
            f"time < {now}ms GROUP BY time(1d) fill(none)"
        )
        aqi_start = -(-now // hour) * hour - day
        raw_aqi = ";".join(
            f'SELECT mean("{p}") AS value FROM "environment" WHERE time >= {aqi_start}ms AND '
            f'time < {now}ms GROUP BY time(1h), "district" fill(none)'
            for p in ("pm25", "pm10", "so2", "no2", "o3", "co")
        )
        proc = ApiProcess(influx, work)
        with proc as url, httpx.Client(base_url=url, timeout=120) as api:
            deadline = time.monotonic() + 600
            while _health(api) != 200:  # latest-value table primed
                if proc.poll() is not None:
                    raise RuntimeError(f"citysense api exited: {proc.output()}")
                assert time.monotonic() < deadline, "the API never became healthy"
                time.sleep(0.2)

            def api_get(path: str, **params: str) -> Callable[[], None]:
                def call() -> None:
                    r = api.get(path, params=params)
                    r.raise_for_status()

                return call

            week_params = {"metric": "pm25", "every": "1h", "start": str(week_start)}
            year_params = {"metric": "pm25", "every": "1d", "start": str(year_start)}
            source = api.get("/api/v1/environment/series", params=year_params).json()["source"]
            log.info("series 1 d × 365 d answered from %s", source)
            cases = [
                ("latest", "latest (every air station, 9 metrics)",
                 api_get("/api/v1/environment/latest"), raw_query(raw_latest)),
                ("devices", "devices (last seen from any reading, health)",
                 api_get("/api/v1/devices"), raw_query(raw_devices)),
                ("series 1 h", "series 1 h × 7 d, by district",
                 api_get("/api/v1/environment/series", group_by="district", **week_params),
                 raw_query(raw_series)),
                ("series 1 h", "series 1 h × 7 d, whole city",
                 api_get("/api/v1/environment/series", **week_params),
                 raw_query(raw_series.replace(', "district"', ""))),
                ("series 1 d", "series 1 d × 365 d, whole city",
                 api_get("/api/v1/environment/series", **year_params), raw_query(raw_year)),
                ("aqi", "aqi (hj633-2012)", api_get("/api/v1/environment/aqi"),
                 raw_query(raw_aqi)),
            ]  # fmt: skip
            for key, name, api_call, raw_call in cases:
                raw50, raw95 = time_calls(raw_call, args.requests)
                p50, p95 = time_calls(api_call, args.requests)
                goal_ms = GOALS[key]
                met = p95 <= goal_ms and raw95 >= 5 * p95
                log.info(
                    "%s, %s: p50 %.1f p95 %.1f ms (raw InfluxQL p50 %.1f p95 %.1f)",
                    size.label, name, p50, p95, raw50, raw95,
                )  # fmt: skip
                size.p95[name] = p95
                label = f"{size.label}, {name}"
                section.add(
                    Result(f"{label}: p50", p50, "ms", "", raw50, "", "raw InfluxQL p50",
                           higher_is_better=False)
                )  # fmt: skip
                section.add(
                    Result(f"{label}: p95", p95, "ms", f"p95 ≤ {goal_ms} ms, ≥ 5× faster",
                           raw95, "goal met" if met else "goal NOT met", "raw InfluxQL p95",
                           higher_is_better=False)
                )  # fmt: skip
        raw.close()
        size.settle_s = settle_s  # type: ignore[attr-defined]
    finally:
        influx.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_api", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 devices, 2 days, 20 requests")
    parser.add_argument(
        "--sizes",
        default="1000",
        help="devices per store size, comma-separated (1000 = 2 M points; 10000 = 20 M)",
    )
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--interval", type=int, default=10, help="minutes between uplinks")
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument(
        "--ingest",
        action="store_true",
        help="also measure ingest readings/s with rollups on vs off (citysense ingest, MQTT)",
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS_PATH, help="markdown file to merge results into"
    )
    args = parser.parse_args(argv)
    # the measuring client reads megabyte answers as the API writes them: with the same
    # allocator setting, so its own page faults are not counted as the API's latency
    keep_large_blocks()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    sizes = [Size(int(n)) for n in args.sizes.split(",") if n.strip()]  # none: --ingest only
    if args.quick:
        sizes, args.days, args.requests = [Size(200)], 2.0, 20
    work = WORK_DIR / f"api-{int(time.time())}"
    section = Section("api", "Operator API latency (influxd)", measured_at=now_utc())
    notes: list[str] = []
    try:
        for size in sizes:
            try:
                measure_size(size, args, section, work)
            except Exception as exc:  # a failure keeps what was measured, and the other sizes
                log.exception("%s: not measured", size.label)
                notes.append(f"{size.label}: not measured ({type(exc).__name__}: {exc}).")
            # a reading is one metric's value (a point of the load carries 4 to 9 of them)
            per_reading = size.rollup_cpu_per_reading
            write_per_reading = size.write_cpu_s / max(size.values, 1) * 1e6
            section.add(
                Result(
                    f"{size.label}: rollup CPU per stored reading (worker + influxd, "
                    "recomputed as the load was written)",
                    per_reading,
                    "µs/reading",
                    "≤ 10% of ingest's CPU per reading",
                    write_per_reading,
                    f"{size.windows:,} minute windows ({size.from_writes:,} from the writes, "
                    f"{size.read_back:,} read back) in {size.rollup_s:.0f} s; worker "
                    f"{size.rollup_cpu_s:.0f} s, influxd {size.rollup_influx_cpu_s:.0f} s CPU",
                    "the load's own raw writes (loader + influxd)",
                    higher_is_better=False,
                )
            )
            notes.append(
                f"{size.label}: {size.devices:,} devices × {args.days:g} days every "
                f"{args.interval} min, {size.values:,} field values in {size.points:,} points, "
                f"written in {size.write_s:.0f} s through the ingestor's writer, its rollup "
                f"worker recomputing every ~2 hours of data after it ({size.rollup_s:.0f} s "
                "in all)."
            )
        if len(sizes) > 1:
            small = min(sizes, key=lambda s: s.devices)  # in whatever order they ran
            big = max(sizes, key=lambda s: s.devices)
            for name, p95 in big.p95.items():
                base = small.p95.get(name)
                if base:
                    ratio = p95 / base
                    section.add(
                        Result(
                            f"p95 {big.label} ÷ {small.label}: {name}",
                            ratio,
                            "×",
                            "≤ 1.5×",
                            None,
                            "goal met" if ratio <= 1.5 else "goal NOT met",
                            higher_is_better=False,
                        )
                    )
        if args.ingest:
            ingest_rollups_on_off(section, notes, sizes, quick=args.quick)
        section.body = (
            " ".join(notes)
            + f" {args.requests} sequential requests per figure after 3 warm-up requests, over "
            "HTTP to uvicorn on loopback, each beside the raw InfluxQL for the same question "
            "sent straight to influxd in the same run (*vs baseline* = API ÷ raw: ≤ 0.2 is "
            "≥ 5× faster). The API answers `latest` and `devices` from its latest-value table, "
            "`series` and `aqi` from the 1-hour rollup (the newest minutes from the 1-minute "
            "rollup and raw data). The rollups were built by the ingestor's writer and worker "
            "in the benchmark's process as in a live ingestor: the minutes recomputed from "
            "the lines written; its CPU per reading is the worker's and influxd's CPU while "
            "it recomputed ÷ stored values. The store holds 7 days: the 365-day series covers them "
            f"and 358 empty days. Load average at the end: {load_average()}. The machine is "
            "shared: read the ratios."
            + (" Quick run: a smaller city than the goal's." if args.quick else "")
        )
        section.commands = [
            "python -m bench.bench_api"
            + (" --quick" if args.quick else f" --sizes {args.sizes}")
            + (" --ingest" if args.ingest else "")
        ]
        write_results([section], path=args.results)
        print(section.to_markdown())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _share_of_ingest(name: str, per_reading: float, ingest: float) -> Result:
    """A rollup cost per reading against the goal: at most a tenth of ingest's."""
    return Result(
        f"{name} ÷ ingest CPU per reading",
        per_reading / ingest,
        "×",
        "≤ 0.1×",
        None,
        "goal met" if per_reading <= 0.1 * ingest else "goal NOT met",
        higher_is_better=False,
    )


def ingest_rollups_on_off(
    section: Section, notes: list[str], sizes: list[Size], *, quick: bool
) -> None:
    """citysense ingest (50 readings per message, MQTT, ack after write) with rollups on and
    off, interleaved, two rounds each; the best round of each."""
    from bench.harness import make_payloads, write_payload_file
    from bench.peers import run as peers

    messages = 2000 if quick else 8000
    path = WORK_DIR / "load-rollups-50.txt"
    write_payload_file(make_payloads(messages, 50), path)
    influx = InfluxServer(WORK_DIR / f"influxd-rollups-{os.getpid()}")
    influx.start()
    best: dict[str, peers.Measurement] = {}
    try:
        for _ in range(2):
            for consumer in (peers.CITYSENSE_NO_ROLLUPS, peers.CITYSENSE):
                m = peers.measure(
                    consumer,
                    influx,
                    path,
                    messages,
                    50,
                    120,
                    until_stored=True,
                    until_quiet=True,
                    check_rollups=consumer is peers.CITYSENSE,
                )
                log.info("  %s", m.summary())
                if m.complete and (consumer.key not in best or m.rate > best[consumer.key].rate):
                    best[consumer.key] = m
    finally:
        influx.stop()
        shutil.rmtree(WORK_DIR / f"influxd-rollups-{os.getpid()}", ignore_errors=True)
    on, off = best.get("citysense"), best.get("citysense-no-rollups")
    if on is None or off is None:
        notes.append("Ingest with rollups on vs off: a run did not complete (not measured).")
        return
    ratio = on.rate / off.rate
    section.add(
        Result("ingest, rollups off", off.rate, "readings/s", "", None, "", higher_is_better=True)
    )
    section.add(
        Result(
            "ingest, rollups on",
            on.rate,
            "readings/s",
            "≥ 0.9× rollups off",
            off.rate,
            "goal met" if ratio >= 0.9 else "goal NOT met",
            "rollups off",
        )
    )
    cpu_on = (on.cpu_seconds + on.influx_cpu_seconds) / on.offered * 1e6
    cpu_off = (off.cpu_seconds + off.influx_cpu_seconds) / off.offered * 1e6
    section.add(
        Result(
            "ingest CPU per reading (ingestor + influxd) with dirty marks, until stored",
            cpu_on,
            "µs/reading",
            "",
            cpu_off,
            "the write path's own cost: the worker recomputes those minutes 2 s after their "
            "writes, mostly after this window (its cost: the rollup CPU row)",
            "rollups off",
            higher_is_better=False,
        )
    )
    if on.quiet_cpu_seconds is not None and off.quiet_cpu_seconds is not None:
        live = (on.quiet_cpu_seconds - off.quiet_cpu_seconds) / on.offered * 1e6
        section.add(
            Result(
                "rollup CPU per ingested reading, live (ingestor + influxd until every window "
                "is recomputed and influxd idle, rollups on − off)",
                live,
                "µs/reading",
                "≤ 10% of ingest's CPU per reading",
                cpu_off,
                f"{live / cpu_off:.2f}× ingest's CPU per reading; "
                + "; ".join(n for n in on.notes if n.startswith("until quiet")),
                "ingest CPU per reading, rollups off",
                higher_is_better=False,
            )
        )
        section.add(_share_of_ingest("live rollup CPU per reading", live, cpu_off))
    for size in sizes:  # the rollup build against the ingest path measured here
        section.add(
            _share_of_ingest(
                f"{size.label}: rollup CPU per reading", size.rollup_cpu_per_reading, cpu_off
            )
        )
    notes.append(
        f"Ingest with rollups on vs off: {messages:,} messages of 50 readings through "
        "Mosquitto into `citysense ingest` (ack after write), rollups on = dirty marks in each "
        "write and the rollup worker in the same process; time until every reading is stored "
        "(counted in influxd), best of 2 interleaved rounds."
    )


if __name__ == "__main__":
    sys.exit(main())
