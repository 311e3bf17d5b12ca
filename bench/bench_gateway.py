"""Gateway benchmark: CoAP uplinks accepted durably per second, p99 answer latency, RSS.

Compared in the same run with a bare aiocoap POST handler that stores nothing (same socket
receive buffer): the goal is >= 80% of its rate (BENCH.md). The load generator is a raw
UDP client in its own process that keeps ``--window`` CONs in flight (aiocoap's client sends
one CON at a time per server), retransmitting by MID after 2 s. The gateway runs as
``citysense edge`` with 10,000 registered devices, real Mosquitto, and a stand-in ingestor
that confirms every batch on ``.../stored`` so the outbox drains as in production.

    python -m bench.bench_gateway [--quick]

Sub-commands used internally: ``bare --port P`` (the baseline server) and
``load --port P --count N --window W`` (prints one JSON line of results).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench.harness import (
    WORK_DIR,
    MosquittoServer,
    Result,
    Section,
    bench_parser,
    cpu_seconds,
    free_port,
    now_utc,
    python_command,
    run_section,
    vm_kib,
    wait_until,
)
from tests.servers import ProvisionedMosquitto, free_udp_port

log = logging.getLogger("bench.gateway")

DEVICES = 10_000
GATEWAY = "gw-bench-01"


# --------------------------------------------------------------------------- baseline server


def run_bare(port: int) -> None:
    """A bare aiocoap server: POST /up answers 2.04 and stores nothing."""
    import aiocoap
    import aiocoap.resource

    from citysense.compat.aiocoap import raise_receive_buffer

    class Bare(aiocoap.resource.Resource):
        async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
            return aiocoap.Message(code=aiocoap.CHANGED)

    async def main() -> None:
        site = aiocoap.resource.Site()
        site.add_resource(["up"], Bare())
        ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port))
        raise_receive_buffer(ctx, 4 * 1024 * 1024)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)
        await stop.wait()
        await ctx.shutdown()

    asyncio.run(main())


# --------------------------------------------------------------------------- load generator


def build_payloads(count: int, seed: int) -> list[bytes]:
    """``count`` distinct uplinks (device, time) of air stations, as raw CoAP CON POSTs
    with the MID left at zero (patched per send)."""
    import aiocoap
    from aiocoap.numbers.codes import Code
    from aiocoap.numbers.types import Type

    from citysense.senml import CF_SENML_JSON, encode_values

    rng = random.Random(seed)
    t0 = int(time.time() * 1000) - 3_600_000
    out = []
    for i in range(count):
        device = f"urn:imei:86{i % DEVICES:013d}"
        values = {
            "pm25": round(rng.uniform(5, 150), 1),
            "pm10": round(rng.uniform(10, 250), 1),
            "temperature": round(rng.uniform(-5, 35), 1),
            "humidity": round(rng.uniform(20, 95), 1),
        }
        payload = encode_values(device, t0 + i, values, CF_SENML_JSON)
        msg = aiocoap.Message(
            _mtype=Type.CON, code=Code.POST, _mid=0, _token=i.to_bytes(4, "big"), payload=payload
        )
        msg.opt.uri_path = ("up",)
        msg.opt.content_format = CF_SENML_JSON
        out.append(bytes(msg.encode()))
    return out


def run_load(port: int, count: int, window: int, seed: int, rate: float = 0.0) -> dict[str, float]:
    """Send ``count`` uplinks keeping ``window`` in flight; rate, latency, answer codes."""
    return run_datagrams(port, build_payloads(count, seed), window, seed, rate)


def run_datagrams(
    port: int,
    datagrams: list[bytes],
    window: int,
    seed: int,
    rate: float = 0.0,
    answers: dict[int, bytes] | None = None,
) -> dict[str, float]:
    """Send prepared CON datagrams (token = their index, MID patched per send) keeping
    ``window`` in flight; rate, latency, answer codes, bytes. ``answers`` collects each
    final answer by index (for a caller that decrypts them after the clock)."""
    count = len(datagrams)
    sent_bytes = received_bytes = 0
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    import select

    # token (= index) -> (mid, first sent, last sent, acknowledged empty)
    waiting: dict[int, tuple[int, float, float, bool]] = {}
    latencies: list[float] = []
    codes: dict[str, int] = {}
    retransmits = separate = 0
    next_index = 0
    mid = random.Random(seed).randrange(65536)
    start = time.perf_counter()
    deadline = start + 120
    while (next_index < count or waiting) and time.perf_counter() < deadline:
        while next_index < count and len(waiting) < window:
            if rate and time.perf_counter() < start + next_index / rate:
                break  # paced: a city's devices report at their own rate
            mid = (mid + 1) & 0xFFFF
            raw = bytearray(datagrams[next_index])
            raw[2:4] = mid.to_bytes(2, "big")
            datagrams[next_index] = bytes(raw)
            now = time.perf_counter()
            waiting[next_index] = (mid, now, now, False)
            sock.send(datagrams[next_index])
            sent_bytes += len(datagrams[next_index])
            next_index += 1
        ready, _, _ = select.select([sock], [], [], 0.05)
        if ready:
            while True:
                try:
                    data = sock.recv(2048)
                except BlockingIOError:
                    break
                received_bytes += len(data)
                if len(data) < 4:
                    continue
                mtype = (data[0] >> 4) & 0x3
                tkl = data[0] & 0x0F
                code = data[1]
                if mtype == 0:  # a separate response (CON): acknowledge it
                    sock.send(bytes([0x60, 0x00]) + data[2:4])
                    separate += 1
                token = int.from_bytes(data[4 : 4 + tkl], "big") if tkl else -1
                entry = waiting.get(token)
                if entry is None:
                    continue  # a late duplicate
                if code == 0:  # empty ACK: the answer follows separately
                    waiting[token] = (entry[0], entry[1], entry[2], True)
                    continue
                del waiting[token]
                if answers is not None:
                    answers[token] = data
                latencies.append(time.perf_counter() - entry[1])
                name = f"{code >> 5}.{code & 0x1F:02d}"
                codes[name] = codes.get(name, 0) + 1
        now = time.perf_counter()
        for token, (rmid, first, last, acked) in list(waiting.items()):
            if not acked and now - last > 2.0:
                waiting[token] = (rmid, first, now, acked)
                sock.send(datagrams[token])
                sent_bytes += len(datagrams[token])
                retransmits += 1
    elapsed = time.perf_counter() - start
    sock.close()
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {
        "elapsed": elapsed,
        "answered": len(latencies),
        "ok": codes.get("2.04", 0),
        "rate": codes.get("2.04", 0) / elapsed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "retransmits": retransmits,
        "separate": separate,
        "bytes_per_uplink": (sent_bytes + received_bytes) / max(1, len(latencies)),
        "codes": codes,  # type: ignore[dict-item]
    }


def load(port: int, count: int, window: int, seed: int, rate: float = 0.0) -> dict[str, float]:
    out = subprocess.run(
        python_command(
            "bench.bench_gateway",
            "load",
            "--rate",
            str(rate),
            "--port",
            str(port),
            "--count",
            str(count),
            "--window",
            str(window),
            "--seed",
            str(seed),
        ),
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- runs


def bare_run(count: int, window: int, seed: int) -> tuple[dict[str, float], float, int]:
    port = free_udp_port()
    proc = subprocess.Popen(
        python_command("bench.bench_gateway", "bare", "--port", str(port)),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        cpu0 = cpu_seconds(proc.pid)
        result = load(port, count, window, seed)
        cpu = cpu_seconds(proc.pid) - cpu0
        peak = vm_kib(proc.pid, "VmHWM")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return result, cpu / result["elapsed"], peak


class Confirmer:
    """Plays the ingestor: confirms every batch on ``.../stored`` (the outbox drains)."""

    def __init__(self, url_port: int, tls: tuple[str, str, str] | None = None) -> None:
        """``tls``: (CA file, user, password) for a provisioned broker."""
        import ssl

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.readings = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if tls is not None:
            self.client.tls_set_context(ssl.create_default_context(cafile=tls[0]))
            self.client.username_pw_set(tls[1], tls[2])
        root = f"citysense/v1/{GATEWAY}"

        def on_connect(client: mqtt.Client, *_: object) -> None:
            client.subscribe(f"{root}/up", 1)

        def on_message(client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
            data = json.loads(msg.payload)
            self.readings += len(data["readings"])
            client.publish(f"{root}/stored", json.dumps({"seq": [data["seq"]]}), qos=1)

        self.client.on_connect = on_connect
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", url_port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def edge_process(
    broker: MosquittoServer | ProvisionedMosquitto,
    registry: Path,
    work: Path,
    extra: Sequence[str] = (),
    tls: tuple[str, str, str] | None = None,
) -> Iterator[tuple[int, int, Confirmer]]:
    """``citysense edge`` on free loopback ports with its state under ``work`` and a
    stand-in ingestor confirming its batches; yields (CoAP port, pid, the confirmer)."""
    state = Path(tempfile.mkdtemp(dir=work))
    port, metrics_port = free_udp_port(), free_port()
    cmd = [
        sys.executable,
        "-m",
        "citysense",
        "edge",
        "--gateway",
        GATEWAY,
        "--coap",
        f"127.0.0.1:{port}",
        "--mqtt",
        broker.url,
        "--registry",
        str(registry),
        "--state-dir",
        str(state),
        "--metrics-bind",
        f"127.0.0.1:{metrics_port}",
        "--log-level",
        "WARNING",
        *extra,
    ]
    confirmer = Confirmer(broker.port, tls)
    proc = subprocess.Popen(cmd)
    try:

        def up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", metrics_port), timeout=1):
                    return True
            except OSError:
                return False

        wait_until(up, 60, "the gateway")
        yield port, proc.pid, confirmer
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        confirmer.close()
        shutil.rmtree(state, ignore_errors=True)


def gateway_run(
    broker: MosquittoServer | ProvisionedMosquitto,
    work: Path,
    count: int,
    window: int,
    seed: int,
    steady: tuple[int, float] | None = None,
    *,
    mqtt_args: Sequence[str] = (),
    tls: tuple[str, str, str] | None = None,
) -> tuple[dict[str, float], float, int, int, int]:
    """One gateway process: a paced phase first (``steady`` = count, rate; its RSS is the
    figure for a city's load), then the burst at full speed. ``mqtt_args`` (given after the
    plain ``--mqtt``, so they win) and ``tls`` (the confirmer's) run it against a provisioned
    broker."""
    from citysense.registry import Device, format_registry

    registry = work / "registry.csv"
    if not registry.exists():
        registry.write_text(
            format_registry(
                Device(f"urn:imei:86{i:013d}", "air_station", "d", "s", 34.7, 113.7, GATEWAY)
                for i in range(DEVICES)
            )
        )
    with edge_process(broker, registry, work, mqtt_args, tls) as (port, pid, confirmer):
        idle_rss = vm_kib(pid, "VmRSS")
        steady_rss = 0
        if steady is not None:
            load(port, steady[0], 64, seed + 1000, rate=steady[1])
            steady_rss = vm_kib(pid, "VmHWM")
        cpu0 = cpu_seconds(pid)
        result = load(port, count, window, seed)
        cpu = cpu_seconds(pid) - cpu0
        wait_until(lambda: confirmer.readings >= result["ok"], 120, "every reading confirmed")
        peak_rss = vm_kib(pid, "VmHWM")
    return result, cpu / result["elapsed"], idle_rss, steady_rss, peak_rss


def measure(quick: bool) -> Section:
    count = 20_000 if quick else 60_000
    window = 256
    rounds = 1 if quick else 3
    steady = (3000, 100.0) if quick else (6000, 100.0)
    steady_rss = 0
    work = WORK_DIR / f"gateway-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    bare: list[dict[str, float]] = []
    gw: list[dict[str, float]] = []
    rss: list[tuple[int, int]] = []
    cpu_bare: list[float] = []
    rss_bare: list[int] = []
    cpu_gw: list[float] = []
    broker = MosquittoServer(work / "mosquitto")
    broker.start()
    try:
        for r in range(rounds):  # alternate, so both see the same machine load
            b, cb, bare_peak = bare_run(count, window, seed=r)
            bare.append(b)
            rss_bare.append(bare_peak)
            cpu_bare.append(cb)
            log.info("bare aiocoap: %.0f req/s, p99 %.1f ms", b["rate"], b["p99_ms"])
            g, cg, idle, steady_peak, peak = gateway_run(
                broker, work, count, window, seed=r, steady=steady if r == 0 else None
            )
            if r == 0:
                steady_rss = steady_peak
            gw.append(g)
            cpu_gw.append(cg)
            rss.append((idle, peak))
            log.info(
                "gateway: %.0f uplinks/s, p99 %.1f ms, %.2f cores, peak RSS %.1f MB (bare %.1f MB)",
                g["rate"],
                g["p99_ms"],
                cg,
                peak / 1024,
                bare_peak / 1024,
            )
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    best_bare = max(bare, key=lambda x: x["rate"])
    best_gw = max(gw, key=lambda x: x["rate"])
    section = Section("gateway", "Gateway: CoAP uplinks accepted durably", measured_at=now_utc())
    section.add(
        Result(
            "bare aiocoap POST handler (stores nothing)",
            best_bare["rate"],
            "req/s",
            note=f"p99 {best_bare['p99_ms']:.1f} ms, {statistics.mean(cpu_bare):.2f} cores",
        )
    )
    section.add(
        Result(
            "gateway: uplinks answered 2.04 after commit",
            best_gw["rate"],
            "uplinks/s",
            goal="≥ 0.8× bare aiocoap",
            baseline=best_bare["rate"],
            baseline_name="bare aiocoap",
            note=f"4 readings' values per uplink, {statistics.mean(cpu_gw):.2f} cores",
        )
    )
    section.add(
        Result(
            "gateway p99 answer latency at that load",
            best_gw["p99_ms"],
            "ms",
            baseline=best_bare["p99_ms"],
            baseline_name="bare aiocoap",
            higher_is_better=False,
            note=f"p50 {best_gw['p50_ms']:.1f} ms; {window} CONs in flight",
        )
    )
    section.add(
        Result(
            f"gateway RSS, {DEVICES:,} registered devices, {steady[1]:.0f} uplinks/s",
            steady_rss / 1024,
            "MB",
            goal="≤ 60 MB",
            higher_is_better=False,
            note=f"VmHWM after {steady[0]:,} paced uplinks; idle after start "
            f"{max(i for i, _ in rss) / 1024:.1f} MB",
        )
    )
    section.add(
        Result(
            "gateway peak RSS in the full-speed burst",
            max(p for _, p in rss) / 1024,
            "MB",
            baseline=max(rss_bare) / 1024,
            baseline_name="bare aiocoap",
            higher_is_better=False,
            note="aiocoap keeps every answer for duplicate detection (60 s in the gateway)",
        )
    )
    section.add(
        Result(
            "gateway uplinks per CPU-second",
            best_gw["rate"] / max(statistics.mean(cpu_gw), 1e-9),
            "uplinks/CPU-s",
            baseline=best_bare["rate"] / max(statistics.mean(cpu_bare), 1e-9),
            baseline_name="bare aiocoap",
            note="rate divided by the server process's CPU use (robust to a busy machine)",
        )
    )
    section.body = (
        f"{count:,} uplinks per run, {rounds} alternating round(s) of bare server and gateway; "
        "best round of each shown (every round: "
        + ", ".join(
            f"bare {b['rate']:.0f} / gateway {g['rate']:.0f}" for b, g in zip(bare, gw, strict=True)
        )
        + "). The gateway validates each uplink against the registry and catalog, commits it "
        "to its SQLite outbox (WAL, synchronous=FULL, group commit) before answering, and "
        "publishes batches to Mosquitto that a stand-in ingestor confirms on `.../stored` in the "
        "same run. Retransmissions (2 s): bare "
        + ", ".join(str(int(b["retransmits"])) for b in bare)
        + "; gateway "
        + ", ".join(str(int(g["retransmits"])) for g in gw)
        + ". Answer codes of the gateway's best round: "
        + json.dumps(best_gw["codes"])
        + "."
    )
    section.commands = [
        "python -m bench.bench_gateway bare --port P",
        "citysense edge --registry 10k-devices.csv --mqtt mqtt://127.0.0.1:P ...",
        f"python -m bench.bench_gateway load --port P --count {count} --window {window}",
    ]
    return section


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("bench.bench_gateway")
    parser.add_argument("mode", nargs="?", default="measure", choices=("measure", "bare", "load"))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=0.0, help="uplinks/s (0: as fast as it goes)")
    args = parser.parse_args(argv)
    if args.mode == "bare":
        run_bare(args.port)
        return 0
    if args.mode == "load":
        print(json.dumps(run_load(args.port, args.count, args.window, args.seed, args.rate)))
        return 0
    run_section(measure, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
