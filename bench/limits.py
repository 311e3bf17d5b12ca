"""The machine's limits, measured in the run: what influxd and Mosquitto do on their own.

* influxd ``/write`` with pre-serialised line protocol, batches of 1, 100, 1,000 and 5,000
  points, from 1 and from 4 writer processes (the client does nothing but send);
* Mosquitto QoS 1, one publisher to one subscriber: its own C clients (``mosquitto_pub
  --repeat`` to ``mosquitto_sub -C``, from Debian's ``mosquitto-clients``, installed here with
  apt-get when missing), a C publisher to a paho subscriber, paho to paho, and the benchmark's
  own bare-socket publisher (to show it never limits a figure).

Every load is bounded in count and time. Run alone: ``python -m bench.limits [--quick]``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import subprocess
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier as MpBarrier
from pathlib import Path

from bench.harness import (
    WORK_DIR,
    InfluxServer,
    MosquittoServer,
    Result,
    Section,
    bench_parser,
    ensure_apt_binary,
    make_payloads,
    mosquitto_pub_command,
    mosquitto_sub_command,
    mqttload_pub_command,
    now_utc,
    python_command,
    run_section,
    running_servers,
    write_payload_file,
)
from bench.peers.common import write_connection

log = logging.getLogger(__name__)

#: Expected points/s per batch size (BENCH.md), to size the pre-serialised load.
_EXPECTED = {1: 4_000, 100: 200_000, 1000: 450_000, 5000: 700_000}


@dataclass(slots=True)
class Limits:
    """The limits later figures are compared with (0 when not measured)."""

    influx_points_s: dict[tuple[int, int], float] = field(default_factory=dict)
    mqtt_c_msgs_s: float = 0.0
    mqtt_c_to_paho_msgs_s: float = 0.0
    mqtt_paho_msgs_s: float = 0.0
    load_msgs_s: float = 0.0

    @property
    def influx_best(self) -> float:
        """influxd's best rate: the ingest limit with many readings per message."""
        return max(self.influx_points_s.values(), default=0.0)

    @property
    def mqtt_best(self) -> float:
        """Mosquitto's best QoS 1 rate into one subscriber: the limit at one reading per message.

        ``mosquitto_pub`` keeps 20 messages in flight, so a pipelining publisher (the
        benchmark's own, 2,000 in flight) gets more through the same broker.
        """
        return max(self.mqtt_c_msgs_s, self.load_msgs_s)

    @property
    def influx_one_writer_5000(self) -> float:
        return self.influx_points_s.get((5000, 1), 0.0)


def _influx_writer(
    url: str,
    db: str,
    batch: int,
    writer: int,
    seconds: float,
    points: int,
    go: MpBarrier,
    out: mp.Queue[tuple[int, float]],
) -> None:
    """One writer process: serialise first, then only POST until time or points run out."""
    t0 = int(time.time() * 1000) - 3_600_000
    bodies: list[bytes] = []
    for b in range(max(1, points // batch)):
        lines = []
        for k in range(batch):
            i = b * batch + k
            lines.append(
                f"environment,device=lim-{batch}-{writer}-{i % 1000:04d},kind=air_station,"
                f"district=d{i % 12:02d},site=s{i % 240:03d},gateway=gw-lim "
                f"pm25={i % 97}.0,pm10={i % 89}.5,temperature=21.5,humidity=40.0 "
                f"{t0 + i // 1000}"
            )
        bodies.append("\n".join(lines).encode())
    conn, path = write_connection(url, db, timeout=60)
    go.wait(300)
    start = time.monotonic()
    deadline = start + seconds
    sent = 0
    for body in bodies:
        if time.monotonic() > deadline:
            break
        conn.request("POST", path, body=body)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 204:
            raise RuntimeError(f"/write answered {resp.status}")
        sent += batch
    out.put((sent, time.monotonic() - start))
    conn.close()


def influx_write_rate(
    influx: InfluxServer, batch: int, writers: int, seconds: float, db: str = "limits"
) -> float:
    """Points/s influxd accepts from ``writers`` processes posting ``batch``-point bodies."""
    influx.query(f'CREATE DATABASE "{db}"', method="POST")
    ctx = mp.get_context("fork")
    go = ctx.Barrier(writers + 1)
    out: mp.Queue[tuple[int, float]] = ctx.Queue()
    per_writer = int(_EXPECTED[batch] * seconds * 1.3 / writers) + batch
    procs = [
        ctx.Process(
            target=_influx_writer,
            args=(influx.url, db, batch, w, seconds, per_writer, go, out),
            daemon=True,
        )
        for w in range(writers)
    ]
    for p in procs:
        p.start()
    # Serialisation takes a moment; the clock starts when every writer is ready.
    go.wait(300)
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(30)
    total = sum(n for n, _ in results)
    elapsed = max(s for _, s in results)
    influx.query(f'DROP DATABASE "{db}"', method="POST")
    return total / elapsed if elapsed > 0 else 0.0


def _persistent_sub(port: int, client_id: str, topic: str) -> None:
    """Create a persistent QoS 1 session so nothing published before the reader starts is lost."""
    subprocess.run(
        mosquitto_sub_command(port, client_id, topic, "-E"),
        check=True,
        capture_output=True,
        timeout=30,
    )


def mqtt_c_rate(broker: MosquittoServer, payload: bytes, count: int, seconds: float) -> float:
    """QoS 1 messages/s from ``mosquitto_pub --repeat`` to ``mosquitto_sub``."""
    sub_id, topic = f"lim-c-{time.monotonic_ns()}", "bench/limits/c"
    _persistent_sub(broker.port, sub_id, topic)
    sub = subprocess.Popen(
        mosquitto_sub_command(
            broker.port, sub_id, topic, "-C", str(count), "-W", str(int(seconds) + 1), "-N"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    start = time.monotonic()
    pub = subprocess.run(
        mosquitto_pub_command(broker.port, topic, payload, count),
        capture_output=True,
        timeout=seconds + 30,
        check=False,
    )
    received = sub.communicate(timeout=seconds + 30)[0]
    elapsed = time.monotonic() - start
    if pub.returncode != 0:
        raise RuntimeError(f"mosquitto_pub failed: {pub.stderr.decode()[-500:]}")
    # -N: payloads without newlines; each has the same length.
    got = len(received) // len(payload)
    return got / elapsed


def mqtt_load_rate(
    broker: MosquittoServer,
    payload_file: Path,
    count: int,
    seconds: float,
    publisher: str,
    subscriber: str,
) -> float:
    """QoS 1 messages/s from a publisher (paho, raw or C) to a subscriber (paho or C)."""
    topic = "citysense/v1/+/up"
    ready = WORK_DIR / f"sub-ready-{time.monotonic_ns()}"
    if subscriber == "paho":
        sub = subprocess.Popen(
            python_command(
                "bench.peers.mqttload",
                "sub",
                "--port",
                str(broker.port),
                "--topic",
                topic,
                "--count",
                str(count),
                "--seconds",
                str(seconds),
                "--ready",
                str(ready),
            ),
            stdout=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while not ready.exists():
            if time.monotonic() > deadline or sub.poll() is not None:
                sub.kill()
                raise RuntimeError("paho subscriber did not subscribe")
            time.sleep(0.02)
        ready.unlink()
    else:
        sub_id = f"lim-sub-{time.monotonic_ns()}"
        _persistent_sub(broker.port, sub_id, topic)
        sub = subprocess.Popen(
            mosquitto_sub_command(
                broker.port, sub_id, topic, "-C", str(count), "-W", str(int(seconds) + 1)
            ),
            stdout=subprocess.PIPE,
            text=True,
        )
    start = time.monotonic()
    if publisher == "c":
        body = payload_file.read_bytes().split(b"\n", 1)[0].partition(b"\t")[2]
        subprocess.run(
            mosquitto_pub_command(broker.port, "citysense/v1/gw-lim/up", body, count),
            capture_output=True,
            timeout=seconds + 30,
            check=True,
        )
    else:
        subprocess.run(
            mqttload_pub_command(broker.port, payload_file, count, seconds, raw=publisher == "raw"),
            capture_output=True,
            timeout=seconds + 60,
            check=True,
        )
    out, _ = sub.communicate(timeout=seconds + 30)
    if subscriber == "paho":
        stats = json.loads(out.strip().splitlines()[-1])
        # The subscriber's own first-to-last interval excludes its start-up.
        return float(stats["messages"]) / max(time.monotonic() - start, 1e-9)
    got = out.count("\n")
    return got / (time.monotonic() - start)


def measure(
    broker: MosquittoServer, influx: InfluxServer, quick: bool = False
) -> tuple[Section, Limits]:
    """Measure every limit; return the section for RESULTS.md and the figures."""
    section = Section("limits", "Machine limits (each server alone)", measured_at=now_utc())
    limits = Limits()
    seconds = 2.0 if quick else 4.0
    for batch in (1, 100, 1000, 5000):
        for writers in (1, 4):
            rate = influx_write_rate(influx, batch, writers, seconds)
            limits.influx_points_s[(batch, writers)] = rate
            section.add(
                Result(
                    f"influxd /write, batch {batch:,}, {writers} writer{'s' if writers > 1 else ''}",
                    rate,
                    "points/s",
                    note="pre-serialised line protocol, ms precision",
                )
            )
            log.info("influxd batch %d x%d: %.0f points/s", batch, writers, rate)
    ensure_apt_binary("mosquitto_pub", "mosquitto-clients")
    payloads = make_payloads(20_000 if quick else 120_000, 1, tag="lim")
    payload_file = write_payload_file(payloads, WORK_DIR / "limits-1.txt")
    count = 50_000 if quick else 150_000
    mseconds = 20.0 if quick else 40.0
    limits.mqtt_c_msgs_s = mqtt_c_rate(broker, payloads[0][1], count, mseconds)
    section.add(
        Result(
            "Mosquitto QoS 1, C clients (mosquitto_pub → mosquitto_sub)",
            limits.mqtt_c_msgs_s,
            "msg/s",
            note=f"{len(payloads[0][1])}-byte envelope",
        )
    )
    n = len(payloads)
    # (figure of Limits, publisher, subscriber, name, note); compared with the C clients
    for attr, publisher, subscriber, name, note in (
        ("mqtt_c_to_paho_msgs_s", "c", "paho",
         "Mosquitto QoS 1, mosquitto_pub → paho subscriber", ""),
        ("mqtt_paho_msgs_s", "paho", "paho", "Mosquitto QoS 1, paho → paho", ""),
        ("load_msgs_s", "raw", "c", "benchmark load: bare-socket QoS 1 publisher → mosquitto_sub",
         "the publisher every ingest figure uses"),
    ):  # fmt: skip
        rate = mqtt_load_rate(broker, payload_file, n, mseconds, publisher, subscriber)
        setattr(limits, attr, rate)
        section.add(
            Result(
                name,
                rate,
                "msg/s",
                baseline=limits.mqtt_c_msgs_s,
                baseline_name="C clients",
                note=note,
            )
        )
    section.body = (
        "Each server alone, loaded by clients that do nothing else. influxd's best rate is the "
        "ingest limit with many readings per message (one reading = one point); the C clients' "
        "QoS 1 rate is the limit with one reading per message -- the better of its C clients "
        "(`mosquitto_pub` keeps 20 messages in flight) and the benchmark's pipelining publisher "
        "(2,000 in flight) into `mosquitto_sub`. `mosquitto-clients` is installed by the "
        "benchmark with apt-get when missing."
    )
    section.commands = [
        "POST /write?db=limits&precision=ms  (N-line bodies serialised before the clock starts)",
        "mosquitto_sub -c -i ID -q 1 -t T -E;  mosquitto_sub -c -i ID -q 1 -t T -C N -N &",
        "mosquitto_pub -q 1 -t T -m ENVELOPE --repeat N --repeat-delay 0",
        "python -m bench.peers.mqttload sub|pub [--raw] ...",
    ]
    return section, limits


def main(argv: list[str] | None = None) -> int:
    def alone(quick: bool) -> Section:
        with running_servers("limits") as (broker, influx):
            return measure(broker, influx, quick)[0]

    run_section(alone, bench_parser("bench.limits").parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
