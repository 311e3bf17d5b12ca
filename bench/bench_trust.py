"""Trust benchmark: what TLS and passwords cost, and whether hostile requests grow /metrics.

In one run, alternating rounds:

* **gateway**: ``citysense edge`` (10,000 registered devices) taking CoAP uplinks at full speed
  and publishing them, against Mosquitto with ``deploy/mosquitto.conf`` (plain, anonymous) and
  against a broker written by ``citysense deploy broker`` (TLS + user name and password); a
  stand-in ingestor confirms every batch (over TLS as ``ingest`` in the second case). Goal:
  TLS ≥ 0.9× plain (BENCH.md, second round).
* **ingest**: ``citysense ingest`` draining a queue of envelopes (50 readings each, then 1)
  that waited for it on its persistent session, into influxd; plain vs TLS + password. The
  clock runs from the first point influxd reports written to the last. Goal ≥ 0.9×.
* **/metrics**: ``citysense api`` (keys file, embedded store): the size of ``/metrics`` before
  and after 10,000 hostile requests (invented methods, random paths, wrong keys) sent from
  127.0.0.1 while the operator reads from 127.0.0.2. Goal: unchanged ± 1 KB.

    python -m bench.bench_trust [--quick] [--results FILE]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.bench_gateway import gateway_run
from bench.harness import (
    WORK_DIR,
    Result,
    Section,
    cpu_seconds,
    influx_points_written,
    make_payloads,
    now_utc,
    write_results,
)
from provision.broker import write_broker
from tests.servers import (
    InfluxServer,
    MosquittoServer,
    ProvisionedMosquitto,
    free_port,
    free_port_pair,
    wait_until,
)

log = logging.getLogger("bench.trust")
GATEWAY = "gw-bench-01"  #: bench_gateway's gateway id
QUEUE_GATEWAY = "gw-bench-00"  #: make_payloads' first gateway
WARM_UP = 1000  #: hostile requests before the /metrics size is first taken


def _provisioned(work: Path) -> ProvisionedMosquitto:
    folder = work / "secure"
    write_broker([GATEWAY, QUEUE_GATEWAY], folder, "127.0.0.1", free_port_pair())
    conf = (folder / "mosquitto.conf").read_text()
    port = int(next(line.split()[1] for line in conf.splitlines() if line.startswith("listener")))
    return ProvisionedMosquitto(folder, port)


def _secret(broker: ProvisionedMosquitto, user: str) -> str:
    return (broker.folder / "clients" / f"{user}.password").read_text().strip()


#: (rate, rate per CPU-second of the process under test) of one run
Run = tuple[float, float]


def gateway_rounds(work: Path, rounds: int, count: int) -> tuple[list[Run], list[Run]]:
    plain_broker = MosquittoServer(work / "plain")
    secure = _provisioned(work)
    plain_broker.start()
    secure.start()
    ca = str(secure.folder / "ca.crt")
    tls_args = [
        "--mqtt", f"mqtts://127.0.0.1:{secure.port}", "--mqtt-ca", ca,
        "--mqtt-username", GATEWAY,
        "--mqtt-password-file", str(secure.folder / "clients" / f"{GATEWAY}.password"),
    ]  # fmt: skip
    plain: list[Run] = []
    tls: list[Run] = []

    def run(result: tuple[dict[str, float], float, int, int, int]) -> Run:
        rate, cores = result[0]["rate"], result[1]
        return rate, rate / max(cores, 1e-9)

    try:
        for r in range(rounds):
            p = run(gateway_run(plain_broker, work, count, 256, seed=r))
            t = run(
                gateway_run(
                    secure,
                    work,
                    count,
                    256,
                    seed=r,
                    mqtt_args=tls_args,
                    tls=(ca, "ingest", _secret(secure, "ingest")),
                )
            )
            plain.append(p)
            tls.append(t)
            log.info("gateway round %d: plain %.0f, TLS %.0f uplinks/s", r, p[0], t[0])
    finally:
        plain_broker.stop()
        secure.stop()
    return plain, tls


def _publish_all(port: int, payloads: list[tuple[str, bytes]], tls: tuple[str, str] | None) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if tls is not None:
        import ssl

        client.tls_set_context(ssl.create_default_context(cafile=tls[0]))
        client.username_pw_set(QUEUE_GATEWAY, tls[1])
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(topic, body, qos=1) for topic, body in payloads]
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def ingest_once(
    work: Path,
    influx: InfluxServer,
    secure: bool,
    messages: int,
    per_message: int,
    tag: str,
) -> tuple[float, float]:
    """Readings/s (and per CPU-second) of one ingestor draining a queue that waited on its session (a broker of
    its own: an earlier ingestor's offline session would take a share of the group)."""
    broker: MosquittoServer | ProvisionedMosquitto = (
        _provisioned(work / tag) if secure else MosquittoServer(work / tag / "plain")
    )
    broker.start()
    try:
        return _drain_rate(work, influx, broker, secure, messages, per_message, tag)
    finally:
        broker.stop()


def _drain_rate(
    work: Path,
    influx: InfluxServer,
    broker: MosquittoServer | ProvisionedMosquitto,
    secure: bool,
    messages: int,
    per_message: int,
    tag: str,
) -> tuple[float, float]:
    db = f"trust_{tag}"
    influx.query(f'CREATE DATABASE "{db}"', method="POST")
    args = [
        sys.executable, "-m", "citysense", "ingest", "--influx", influx.url,
        "--influx-api", "1", "--influx-db", db, "--metrics-bind", "off",
        "--state-dir", str(work / f"ingest-{tag}"),
        "--client-id", f"bench-{tag}",
    ]  # fmt: skip
    tls: tuple[str, str] | None = None
    if secure:
        assert isinstance(broker, ProvisionedMosquitto)
        ca = str(broker.folder / "ca.crt")
        args += [
            "--mqtt", f"mqtts://127.0.0.1:{broker.port}", "--mqtt-ca", ca,
            "--mqtt-username", "ingest",
            "--mqtt-password-file", str(broker.folder / "clients" / "ingest.password"),
        ]  # fmt: skip
        tls = (ca, _secret(broker, QUEUE_GATEWAY))
    else:
        args += ["--mqtt", f"mqtt://127.0.0.1:{broker.port}"]
    payloads = make_payloads(messages, per_message, gateways=1, tag=tag)
    total = messages * per_message
    log_path = work / f"ingest-{tag}.log"

    def start() -> subprocess.Popen[bytes]:
        with log_path.open("ab") as err:
            return subprocess.Popen(args, stderr=err)

    # once, to create its persistent session (the queue), then stopped
    first = start()
    try:
        wait_until(lambda: b"ingestor ready" in log_path.read_bytes(), 60, "the ingestor")
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(60)
    _publish_all(broker.port, payloads, tls)
    proc = start()
    try:
        wait_until(lambda: influx_points_written(influx, db) > 0, 60, "the first points")
        started = time.monotonic()
        cpu0 = cpu_seconds(proc.pid)
        try:
            wait_until(lambda: influx_points_written(influx, db) >= total, 120, "every point", 0.02)
        except TimeoutError:
            log.error(
                "%s: %d of %d points; ingest log:\n%s",
                tag,
                influx_points_written(influx, db),
                total,
                log_path.read_text()[-2000:],
            )
            raise
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return total / elapsed, total / max(cpu, 1e-9)


def ingest_rounds(
    work: Path, rounds: int, messages: int, per_message: int
) -> tuple[list[Run], list[Run]]:
    influx = InfluxServer(work / f"influxd-{per_message}")
    influx.start()
    plain: list[Run] = []
    tls: list[Run] = []
    try:
        for r in range(rounds):
            p = ingest_once(work, influx, False, messages, per_message, f"p{per_message}r{r}")
            t = ingest_once(work, influx, True, messages, per_message, f"t{per_message}r{r}")
            plain.append(p)
            tls.append(t)
            log.info(
                "ingest %d/msg round %d: plain %.0f, TLS %.0f readings/s",
                per_message,
                r,
                p[0],
                t[0],
            )
    finally:
        influx.stop()
    return plain, tls


def metrics_flood(work: Path, hostile: int) -> tuple[int, int]:
    keys = work / "keys.toml"
    out = subprocess.run(
        [sys.executable, "-m", "citysense", "api", "keys", "add", "--file", str(keys),
         "--role", "operator"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    key = out.stdout.strip()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "citysense", "api", "--bind", f"127.0.0.1:{port}",
         "--api-keys-file", str(keys), "--state-dir", str(work / "api"), "--log-level", "WARNING"],
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    operator = httpx.Client(
        base_url=url,
        headers={"Authorization": f"Bearer {key}"},
        transport=httpx.HTTPTransport(local_address="127.0.0.2"),
    )
    rng = random.Random(7)
    try:

        def up() -> bool:
            try:
                return operator.get("/metrics").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 60, "the API")
        with httpx.Client(base_url=url) as attacker:

            def attack(i: int) -> None:
                method = rng.choice(["GET", "POST", f"X{i}", "PROPFIND", f"M-{i % 977}"])
                path = rng.choice(
                    [
                        f"/api/v1/{i}/latest",
                        f"/{i}/{'a' * (i % 50)}",
                        "/api/v1/catalog",
                        f"/static/{i}",
                    ]
                )
                attacker.request(method, path, headers={"Authorization": f"Bearer k{i}"})

            # a first 1,000 of the same kinds: every label set the fixed set allows for them
            # exists afterwards; the figure is what the next 10,000 add
            for i in range(WARM_UP):
                attack(hostile + i)
            before = len(operator.get("/metrics").content)
            for i in range(hostile):
                attack(i)
        after = len(operator.get("/metrics").content)
    finally:
        operator.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return before, after


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_trust")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--results", default=None, help="write here instead of bench/RESULTS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    work = WORK_DIR / f"trust-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rounds = 2 if args.quick else 3
    count = 10_000 if args.quick else 30_000
    hostile = 10_000
    try:
        gw_plain, gw_tls = gateway_rounds(work, rounds, count)
        in50_plain, in50_tls = ingest_rounds(work, rounds, 1000 if args.quick else 4000, 50)
        in1_plain, in1_tls = ingest_rounds(work, rounds, 10_000 if args.quick else 30_000, 1)
        before, after = metrics_flood(work, hostile)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    section = Section("trust", "Trust: TLS and passwords, hostile requests", measured_at=now_utc())
    for what, unit, pl, tl, load in (
        ("gateway uplinks", "uplinks/s", gw_plain, gw_tls, f"{count:,} CoAP uplinks a round"),
        ("ingest readings, 50 per message", "readings/s", in50_plain, in50_tls, ""),
        ("ingest readings, 1 per message", "readings/s", in1_plain, in1_tls, ""),
    ):
        rounds_text = ", ".join(f"{p[0]:.0f}/{t[0]:.0f}" for p, t in zip(pl, tl, strict=True))
        section.add(
            Result(
                f"{what} over TLS + password",
                max(t[0] for t in tl),
                unit,
                goal="≥ 0.9× plain",
                baseline=max(p[0] for p in pl),
                baseline_name="plain MQTT",
                note=f"{load}; rounds plain/TLS {rounds_text}".lstrip("; "),
            )
        )
        section.add(
            Result(
                f"{what} per CPU-second over TLS + password",
                max(t[1] for t in tl),
                unit.replace("/s", "/CPU-s"),
                baseline=max(p[1] for p in pl),
                baseline_name="plain MQTT",
                note="rate over the process's CPU use (robust to a busy machine)",
            )
        )
    section.add(
        Result(
            f"/metrics size after {hostile:,} hostile requests",
            after,
            "bytes",
            goal="unchanged ± 1 KB",
            baseline=before,
            baseline_name="before the flood",
            higher_is_better=False,
            note=f"change {after - before:+d} bytes; measured after {WARM_UP:,} requests of "
            "the same kinds (the fixed label set they can reach is then present)",
        )
    )
    section.body = (
        f"{rounds} alternating rounds each, best shown. TLS: a broker written by `citysense "
        "deploy broker` (TLS 1.3, ECDSA P-256, PBKDF2-SHA512 passwords, the ACL) against "
        "Mosquitto with `deploy/mosquitto.conf` on the same machine in the same run."
    )
    section.commands = ["python -m bench.bench_trust" + (" --quick" if args.quick else "")]
    for r in section.results:
        log.info("%s: %.0f %s (baseline %s)", r.name, r.value, r.unit, r.baseline)
    write_results([section], path=Path(args.results) if args.results else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
