"""Device trust benchmark: durable uplinks/s with OSCORE and DTLS 1.2 PSK vs plain CoAP.

In one run, against ``citysense edge`` processes with the same registry (2,000 air stations),
real Mosquitto and a stand-in ingestor confirming on ``.../stored``:

* **plain CoAP** (no keys) and **OSCORE** (one key per device): the raw windowed loader of
  ``bench_gateway`` sends datagrams prepared before the clock starts -- OSCORE ones protected
  by :mod:`simulators.oscore` (an independent peer), whose answers are verified and their
  inner codes counted after the clock. Every device sends one uplink first (not timed): a
  device's first request after a gateway start loads its context (a file write); the timed
  figure is the established state. Rounds alternate plain and OSCORE.
* **DTLS, established sessions**: 32 devices, each with an aiocoap client (DTLSSocket) that
  keeps its session, send in parallel (the load generator shares the machine: its CPU is
  reported).
* **DTLS, a new session per uplink**: libcoap's ``coap-client-openssl``, one process per
  uplink (a sleeping device that wakes up, handshakes, sends and goes), 4 at a time.
* **bytes on the wire** per uplink (UDP payloads both ways; for DTLS through a counting relay),
  **CPU** of the gateway per uplink, and **credential look-up** time at 100,000 devices
  (the indexed store vs aiocoap's walk over its credentials map).

    python -m bench.bench_devicetrust [--quick] [--results FILE]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.bench_gateway import GATEWAY, edge_process, run_datagrams
from bench.harness import (
    WORK_DIR,
    Result,
    Section,
    bench_parser,
    cpu_seconds,
    now_utc,
    run_section,
)
from citysense.credentials import (
    DTLS_PSK,
    OSCORE,
    DeviceKey,
    generate_device_keys,
    write_device_keys,
)
from citysense.registry import Device, format_registry
from citysense.senml import CF_SENML_JSON, encode_values
from simulators import coap
from simulators.oscore import DeviceContext
from tests.edge.trust import NatRelay
from tests.servers import MosquittoServer, free_udp_port

log = logging.getLogger("bench.devicetrust")

DEVICES = 2_000
LOOKUP_DEVICES = 100_000
WINDOW = 64


def device_id(i: int) -> str:
    return f"urn:imei:86{i:013d}"


def payload(i: int, t0: int, device: str | None = None) -> bytes:
    """Uplink ``i`` (of device ``i`` modulo the fleet unless named), at a time of its own."""
    values = {"pm25": 10.0 + i % 90, "pm10": 20.0 + i % 150, "temperature": 21.5, "humidity": 55.0}
    return encode_values(device or device_id(i % DEVICES), t0 + i, values, CF_SENML_JSON)


def plain_datagrams(start: int, count: int, t0: int) -> list[bytes]:
    return [
        coap.post(0, (i - start).to_bytes(4, "big"), "up", payload(i, t0), CF_SENML_JSON)
        for i in range(start, start + count)
    ]


def oscore_datagrams(
    contexts: list[DeviceContext], start: int, count: int, t0: int
) -> tuple[list[bytes], list[bytes]]:
    """Protected datagrams and the partial IV each answer is bound to."""
    out, pivs = [], []
    for i in range(start, start + count):
        datagram, piv = contexts[i % DEVICES].protect_post(
            0, (i - start).to_bytes(4, "big"), "up", payload(i, t0), CF_SENML_JSON
        )
        out.append(datagram)
        pivs.append(piv)
    return out, pivs


def inner_codes(
    contexts: list[DeviceContext], start: int, answers: dict[int, bytes], pivs: list[bytes]
) -> dict[str, int]:
    codes: dict[str, int] = {}
    for index, raw in answers.items():
        try:
            inner = contexts[(start + index) % DEVICES].unprotect_response(
                coap.decode(raw), pivs[index]
            )
            name = coap.code_text(inner.code)
        except ValueError:
            name = "unverified"
        codes[name] = codes.get(name, 0) + 1
    return codes


# --------------------------------------------------------------------------- gateways


@contextlib.contextmanager
def gateway(
    broker: MosquittoServer, work: Path, keys: Path | None, coaps: int | None = None
) -> Iterator[tuple[int, int]]:
    """A ``citysense edge`` process; yields (CoAP port, pid)."""
    # the per-device budget stays on (its cost is measured), wide enough for the load
    extra = ["--device-rate", "100000", "--device-burst", "100000"]
    if keys is not None:
        extra += ["--device-keys", str(keys)]
    if coaps is not None:
        extra += ["--coaps", f"127.0.0.1:{coaps}"]
    with edge_process(broker, work / "registry.csv", work, extra) as (port, pid, _):
        yield port, pid


def timed(pid: int, run: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``run(*args, **kwargs)`` and the CPU seconds process ``pid`` used meanwhile."""
    cpu0 = cpu_seconds(pid)
    result = run(*args, **kwargs)
    return result, cpu_seconds(pid) - cpu0


# --------------------------------------------------------------------------- DTLS clients


async def dtls_established(
    port: int, keys: list[DeviceKey], per_device: int, t0: int
) -> dict[str, float]:
    """Each key's device keeps one session and sends ``per_device`` uplinks in turn."""
    from simulators.secure import SecureDevices

    secure = SecureDevices(
        {k.device: k for k in keys}, ("127.0.0.1", 0), ("127.0.0.1", port), Path(".")
    )
    codes: dict[str, int] = {}

    async def device(n: int, key: DeviceKey, count: int, base: int) -> None:
        for j in range(count):
            done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            body = payload(base + j * DEVICES + n, t0, key.device)
            secure.send(key.device, body, CF_SENML_JSON, done.set_result)
            result = await done
            name = coap.code_text(result.code) if result.code is not None else result.outcome  # type: ignore[attr-defined]
            codes[name] = codes.get(name, 0) + 1

    try:
        await asyncio.gather(*(device(n, k, 1, 0) for n, k in enumerate(keys)))  # handshakes
        codes.clear()
        start = time.perf_counter()
        await asyncio.gather(*(device(n, k, per_device, DEVICES * 10) for n, k in enumerate(keys)))
        elapsed = time.perf_counter() - start
    finally:
        await secure.aclose()
    ok = codes.get("2.04", 0)
    return {"elapsed": elapsed, "ok": ok, "rate": ok / elapsed, "codes": codes}  # type: ignore[dict-item]


def coap_client_post(port: int, key: DeviceKey, body: bytes) -> bool:
    done = subprocess.run(
        [
            "coap-client-openssl",
            "-m",
            "post",
            "-t",
            "110",
            "-B",
            "10",
            "-u",
            key.id.decode(),
            "-k",
            key.secret.decode(),
            "-e",
            body.decode(),
            f"coaps://127.0.0.1:{port}/up",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.returncode == 0 and not done.stdout.strip() and "4." not in done.stderr


def dtls_new_sessions(port: int, keys: list[DeviceKey], count: int, t0: int) -> dict[str, float]:
    from concurrent.futures import ThreadPoolExecutor

    start = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        oks = list(
            pool.map(
                lambda i: coap_client_post(
                    port,
                    keys[i % len(keys)],
                    payload(DEVICES * 50 + i, t0, keys[i % len(keys)].device),
                ),
                range(count),
            )
        )
    elapsed = time.perf_counter() - start
    return {"elapsed": elapsed, "ok": sum(oks), "rate": sum(oks) / elapsed}


def printable_keys(devices: list[str], scheme: str) -> list[DeviceKey]:
    """Keys whose secret is printable: libcoap's ``-k`` takes the key as text."""
    import secrets
    import string

    alphabet = (string.ascii_letters + string.digits).encode()
    return [
        DeviceKey(k.device, k.scheme, k.id, bytes(secrets.choice(alphabet) for _ in range(16)))
        for k in generate_device_keys(devices, scheme)
    ]


# --------------------------------------------------------------------------- look-up


def lookup_figures() -> tuple[float, float, float, float]:
    """µs per look-up at 100,000 devices: indexed PSK, indexed OSCORE (context open),
    aiocoap's walk (PSK), and the first look-up of a device (its context loaded)."""
    from aiocoap.credentials import CredentialsMap

    from edge.compat.oscore import COSE_KID
    from edge.devicekeys import DeviceKeyStore

    devices = [device_id(i) for i in range(LOOKUP_DEVICES)]
    psk = printable_keys(devices, DTLS_PSK)
    osc = generate_device_keys(devices, OSCORE)
    folder = Path(tempfile.mkdtemp(dir=WORK_DIR))
    try:
        store = DeviceKeyStore(
            psk + [DeviceKey(k.device + "x", k.scheme, k.id, k.secret) for k in osc], folder
        )
        ids = [k.id for k in psk]
        n = 200_000
        t = time.perf_counter()
        for i in range(n):
            store.find_dtls_psk(ids[(i * 7919) % LOOKUP_DEVICES])
        psk_us = (time.perf_counter() - t) / n * 1e6
        kids = [k.id for k in osc[:1000]]
        t = time.perf_counter()
        for kid in kids:  # first look-up: the context is created and loaded
            store.find_oscore({COSE_KID: kid})
        first_us = (time.perf_counter() - t) / len(kids) * 1e6
        t = time.perf_counter()
        for i in range(n):
            store.find_oscore({COSE_KID: kids[(i * 31) % len(kids)]})
        osc_us = (time.perf_counter() - t) / n * 1e6
        store.close()
        walk = CredentialsMap()
        walk.load_from_dict(
            {
                f":{k.device}": {
                    "dtls": {"psk": {"hex": k.secret.hex()}, "client-identity": {"hex": k.id.hex()}}
                }
                for k in psk
            }
        )
        rounds = 20
        t = time.perf_counter()
        for i in range(rounds):
            walk.find_dtls_psk(ids[LOOKUP_DEVICES // 2 + i])
        walk_us = (time.perf_counter() - t) / rounds * 1e6
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return psk_us, osc_us, walk_us, first_us


# --------------------------------------------------------------------------- measure


def measure(quick: bool) -> Section:
    count = 4_000 if quick else 12_000
    rounds = 1 if quick else 2
    per_device = 20 if quick else 60
    new_sessions = 40 if quick else 150
    work = WORK_DIR / f"devicetrust-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    devices = [device_id(i) for i in range(DEVICES)]
    (work / "registry.csv").write_text(
        format_registry(Device(d, "air_station", "d", "s", 34.7, 113.7, GATEWAY) for d in devices)
    )
    plain: list[tuple[dict[str, float], float]] = []
    osc: list[tuple[dict[str, float], float]] = []
    broker = MosquittoServer(work / "mosquitto")
    broker.start()
    t0 = int(time.time() * 1000) - 3_600_000
    try:
        for r in range(rounds):  # alternate, so both see the same machine load
            base = r * (DEVICES + count) * 4
            with gateway(broker, work, None) as (port, pid):
                run_datagrams(port, plain_datagrams(base, DEVICES, t0), WINDOW, r)  # warm-up
                grams = plain_datagrams(base + DEVICES, count, t0)
                plain.append(timed(pid, run_datagrams, port, grams, WINDOW, r))
            log.info("plain: %.0f uplinks/s", plain[-1][0]["rate"])
            keys = generate_device_keys(devices, OSCORE)
            keys_file = work / f"oscore-{r}.csv"
            write_device_keys(keys_file, keys)
            contexts = [DeviceContext(k.id, k.secret) for k in keys]
            with gateway(broker, work, keys_file) as (port, pid):
                warm, wpivs = oscore_datagrams(contexts, base, DEVICES, t0)
                answers: dict[int, bytes] = {}
                run_datagrams(port, warm, WINDOW, r, answers=answers)
                warm_codes = inner_codes(contexts, base, answers, wpivs)
                grams, pivs = oscore_datagrams(contexts, base + DEVICES, count, t0)
                answers = {}
                result, cpu = timed(pid, run_datagrams, port, grams, WINDOW, r, answers=answers)
                codes = inner_codes(contexts, base + DEVICES, answers, pivs)
                result["outer_codes"] = result["codes"]
                result["codes"] = codes  # type: ignore[assignment]
                result["ok"] = codes.get("2.04", 0)
                result["rate"] = result["ok"] / result["elapsed"]
                result["warm_codes"] = warm_codes  # type: ignore[assignment]
                osc.append((result, cpu))
            log.info("oscore: %.0f uplinks/s (%s)", result["rate"], codes)
        # DTLS
        dkeys = printable_keys(devices, DTLS_PSK)
        dfile = work / "dtls.csv"
        write_device_keys(dfile, dkeys)
        coaps = free_udp_port()
        with gateway(broker, work, dfile, coaps) as (_, pid):
            est, est_cpu = timed(
                pid, asyncio.run, dtls_established(coaps, dkeys[:32], per_device, t0)
            )
            log.info("dtls established: %.0f uplinks/s %s", est["rate"], est["codes"])
            new, new_cpu = timed(pid, dtls_new_sessions, coaps, dkeys[100:], new_sessions, t0)
            log.info("dtls new sessions: %.1f uplinks/s", new["rate"])
            relay = NatRelay(coaps, drop_alerts=False)
            try:
                ok = coap_client_post(
                    relay.port, dkeys[1500], payload(DEVICES * 90, t0, dkeys[1500].device)
                )
                new_bytes, new_grams = relay.bytes, relay.datagrams
                relay.reset()
                sess = asyncio.run(dtls_established(relay.port, dkeys[1600:1601], 10, t0))
                # 1 handshake uplink + 10 on the session: the session's share per uplink
                est_bytes = relay.bytes
            finally:
                relay.close()
            assert ok and sess["ok"] == 10, (ok, sess)
        psk_us, osc_us, walk_us, first_us = lookup_figures()
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    best_plain = max(plain, key=lambda x: x[0]["rate"])
    best_osc = max(osc, key=lambda x: x[0]["rate"])
    plain_bytes = best_plain[0]["bytes_per_uplink"]

    def per_uplink_us(run: tuple[dict[str, float], float]) -> float:
        return run[1] / max(1, run[0]["ok"]) * 1e6

    section = Section(
        "devicetrust", "Device trust: OSCORE and DTLS uplinks vs plain CoAP", measured_at=now_utc()
    )
    section.add(
        Result(
            "plain CoAP: uplinks answered 2.04 after commit",
            best_plain[0]["rate"],
            "uplinks/s",
            note=f"{per_uplink_us(best_plain):.0f} µs gateway CPU per uplink",
        )
    )
    section.add(
        Result(
            "OSCORE: uplinks answered 2.04 after commit",
            best_osc[0]["rate"],
            "uplinks/s",
            goal="≥ 0.7× plain CoAP",
            baseline=best_plain[0]["rate"],
            baseline_name="plain CoAP",
            note=f"{per_uplink_us(best_osc):.0f} µs gateway CPU per uplink",
        )
    )
    section.add(
        Result(
            "OSCORE: uplinks per gateway CPU-second",
            1e6 / per_uplink_us(best_osc),
            "uplinks/CPU-s",
            goal="≥ 0.7× plain CoAP",
            baseline=1e6 / per_uplink_us(best_plain),
            baseline_name="plain CoAP",
            note="the gateway's CPU use per uplink (robust to a busy machine)",
        )
    )
    for what, dtls, how in (
        (
            "established sessions (32 devices)",
            (est, est_cpu),
            "aiocoap client load generator on the same cores",
        ),
        (
            "a new session per uplink",
            (new, new_cpu),
            "one coap-client-openssl process per uplink, 4 at a time",
        ),
    ):
        section.add(
            Result(
                f"DTLS, {what}: uplinks 2.04",
                dtls[0]["rate"],
                "uplinks/s",
                baseline=best_plain[0]["rate"],
                baseline_name="plain CoAP",
                note=f"{per_uplink_us(dtls):.0f} µs gateway CPU per uplink; {how}",
            )
        )
    for name, value in (
        ("plain CoAP", plain_bytes),
        ("OSCORE", best_osc[0]["bytes_per_uplink"]),
        ("DTLS on an established session", (est_bytes - new_bytes) / 10),
        ("DTLS with a new session", new_bytes),
    ):
        section.add(
            Result(
                f"bytes on the wire per uplink, {name}",
                value,
                "bytes",
                baseline=plain_bytes,
                baseline_name="plain CoAP",
                higher_is_better=False,
                note="UDP payloads, request and answer"
                + (f"; {new_grams} datagrams" if name == "DTLS with a new session" else ""),
            )
        )
    section.add(
        Result(
            f"credential look-up at {LOOKUP_DEVICES:,} devices (indexed, PSK identity)",
            psk_us,
            "µs",
            goal="≤ 20 µs",
            baseline=walk_us,
            baseline_name="aiocoap's walk",
            higher_is_better=False,
            note=f"OSCORE kid with its context open {osc_us:.2f} µs; a device's first "
            f"look-up (context loaded from its folder) {first_us:.0f} µs",
        )
    )
    section.body = (
        f"{DEVICES:,} registered air stations, one uplink of 4 values each per request; "
        f"{count:,} timed uplinks per plain and OSCORE run after one untimed uplink per device, "
        f"{rounds} alternating round(s), {WINDOW} requests in flight, best round shown (every "
        "round: "
        + ", ".join(
            f"plain {p[0]['rate']:.0f} / OSCORE {o[0]['rate']:.0f}"
            for p, o in zip(plain, osc, strict=True)
        )
        + "). OSCORE requests are protected before the clock starts by simulators.oscore (an "
        "independent implementation of RFC 8613) and every answer is verified after it; inner "
        f"answer codes {json.dumps(best_osc[0]['codes'])}, of the untimed first uplinks "
        f"{json.dumps(best_osc[0]['warm_codes'])}. DTLS: {per_device} uplinks per device on "
        f"32 established sessions (codes {json.dumps(est['codes'])}); {new_sessions} uplinks "
        "each with a handshake of its own. Bytes per uplink: plain and OSCORE from the loader's "
        "datagrams; DTLS through a counting relay (a new session: the whole exchange of one "
        "coap-client-openssl run; an established one: 10 uplinks on one session less that "
        "session's first uplink with its handshake). The load generators run on the same "
        f"{os.cpu_count()} cores as the gateway."
    )
    section.commands = [
        "citysense edge --registry 2k-devices.csv [--device-keys keys.csv [--coaps ...]] ...",
    ]
    return section


def main(argv: list[str] | None = None) -> int:
    args = bench_parser("bench.bench_devicetrust").parse_args(argv)
    logging.getLogger("coap").setLevel(logging.WARNING)
    run_section(measure, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
