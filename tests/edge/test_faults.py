"""Faults of the gateway itself, as a real process: ``kill -9`` under load, SIGTERM, the outbox
quota, a read-only disk and a full disk. Real Mosquitto, real UDP; the test is the ingestor.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from citysense.senml import CF_SENML_JSON
from tests.edge.gateway import (
    GatewayProcess,
    GatewayThread,
    RawCoap,
    coap_port,
    edge_settings,
    ingestor,
    metric,
    outbox_depth,
    uplink_payload,
    write_registry,
)
from tests.edge.test_coap import aiocoap_post, coap_client
from tests.servers import MosquittoServer, wait_until


def now_ms() -> int:
    return int(time.time() * 1000)


def test_kill9_at_random_moments_loses_no_acknowledged_reading(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    seed = int(os.environ.get("CITYSENSE_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    devices = write_registry(tmp_path / "registry.csv", 100)
    settings = edge_settings(tmp_path, mqtt_url=mosquitto.url, batch_max_readings=200)
    t0 = now_ms() - 600_000
    payloads = [
        uplink_payload(devices[i % 100], t0 + i, {"pm25": float(i % 500)}) for i in range(5000)
    ]
    keys = [(devices[i % 100], "pm25", t0 + i) for i in range(5000)]
    gateway = GatewayProcess(settings, tmp_path / "gateway.log")
    client = RawCoap(coap_port(settings), ack_timeout=0.5)
    answers: dict[int, str] = {}
    with ingestor(mosquitto.url) as ing:
        try:
            gateway.start()
            sender = threading.Thread(
                target=lambda: answers.update(client.send_all(payloads, deadline=180))
            )
            sender.start()
            for target in sorted(rng.sample(range(300, 4700), 3)):
                wait_until(lambda t=target: client.answered >= t, 120, f"{target} answers")
                gateway.kill()  # kill -9: no chance to flush anything
                gateway.start()
            sender.join(200)
            assert not sender.is_alive()
            acked = {keys[i] for i, code in answers.items() if code == "2.04"}
            assert len(acked) == 5000, f"seed {seed}: {len(answers)} answered"
            wait_until(lambda: acked <= ing.keys, 90, f"every acknowledged reading (seed {seed})")
            assert len(acked & ing.keys) == 5000
            wait_until(lambda: outbox_depth(settings) == 0, 30, "the outbox to empty")
            # the Last Will told the cloud each time the gateway died
            assert [s["state"] for s in ing.status].count("offline") >= 1
        finally:
            client.close()
            gateway.close()


def test_sigterm_flushes_and_exits_zero(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    devices = write_registry(tmp_path / "registry.csv", 10)
    # a long batch delay: the readings are still unpublished when SIGTERM arrives
    settings = edge_settings(tmp_path, mqtt_url=mosquitto.url, batch_max_delay=30)
    gateway = GatewayProcess(settings, tmp_path / "gateway.log")
    client = RawCoap(coap_port(settings))
    with ingestor(mosquitto.url) as ing:
        try:
            gateway.start()
            wait_until(lambda: any(s["state"] == "online" for s in ing.status), 20, "online")
            t0 = now_ms() - 1000
            answers = client.send_all([uplink_payload(devices[i % 10], t0 + i) for i in range(50)])
            assert set(answers.values()) == {"2.04"}
            assert gateway.terminate() == 0
            # published at the stop, not 30 s later; the confirmations were awaited (bounded)
            wait_until(lambda: len(ing.keys) == 100, 20, "every reading published at the stop")
            wait_until(lambda: ing.status[-1]["state"] == "offline", 10, "status offline")
        finally:
            client.close()
            gateway.close()


def fill_until_refused(port: int, devices: list[str], limit: int = 5000) -> tuple[int, str]:
    """Send uplinks one at a time until one is refused; (how many were accepted, code)."""
    client = RawCoap(port)
    try:
        t0 = now_ms() - 3_000_000
        for i in range(limit):
            payload = uplink_payload(devices[i % len(devices)], t0 + i)
            answer = client.send_all([payload], deadline=30)
            if answer.get(0) != "2.04":
                return i, answer.get(0, "none")
        return limit, "2.04"
    finally:
        client.close()


def post_one(port: int, device: str) -> str:
    client = RawCoap(port)
    try:
        return client.send_all([uplink_payload(device, now_ms())], deadline=30).get(0, "none")
    finally:
        client.close()


def test_quota_refuses_with_503_and_recovers(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    devices = write_registry(tmp_path / "registry.csv", 10)
    settings = edge_settings(
        tmp_path, mqtt_url=mosquitto.url, outbox_quota_mb=0.1, batch_max_readings=50
    )
    with ingestor(mosquitto.url, confirm=False) as ing, GatewayThread(settings):
        port = coap_port(settings)
        accepted, code = fill_until_refused(port, devices)
        assert code == "5.03" and accepted > 10
        assert post_one(port, devices[0]) == "5.03"
        # the same answer, with Max-Age, to both client libraries
        payload = uplink_payload(devices[2], now_ms())
        response = asyncio.run(aiocoap_post(port, payload, CF_SENML_JSON))
        assert response.code.dotted == "5.03" and response.opt.max_age == 30
        assert response.payload == b"outbox full"
        payload_file = tmp_path / "uplink.json"
        payload_file.write_bytes(payload)
        url = f"coap://127.0.0.1:{port}/up"
        assert coap_client(["-m", "post", "-t", "110", "-f", str(payload_file), url]) == "5.03"
        assert metric(settings, "citysense_edge_uplinks_total") >= accepted + 4
        # the ingestor catches up: confirmations free the outbox
        wait_until(lambda: len(ing.seqs()) > 0, 30, "batches published")
        ing.confirm_seqs(sorted(set(ing.seqs())))
        wait_until(lambda: post_one(port, devices[1]) == "2.04", 30, "uplinks accepted again")


def test_evict_oldest_policy_keeps_accepting(tmp_path: Path) -> None:
    devices = write_registry(tmp_path / "registry.csv", 10)
    settings = edge_settings(tmp_path, outbox_quota_mb=0.1, outbox_policy="evict-oldest")
    with GatewayThread(settings):
        accepted, code = fill_until_refused(coap_port(settings), devices, limit=1500)
        assert (accepted, code) == (1500, "2.04")
        assert metric(settings, "citysense_edge_outbox_evicted_total") > 0
        assert outbox_depth(settings) < 1500


def chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True)


def test_read_only_disk_answers_503_and_recovers(tmp_path: Path) -> None:
    """``chattr +i`` makes the outbox files and folder immutable: every write fails even
    for root (a chmod would not stop root). That is what a disk remounted read-only does
    to SQLite: the commit fails, the device must get 5.03, and nothing is half-stored."""
    devices = write_registry(tmp_path / "registry.csv", 3)
    settings = edge_settings(tmp_path)
    state = Path(settings.state_dir)
    with GatewayThread(settings):
        port = coap_port(settings)
        assert post_one(port, devices[0]) == "2.04"
        # not the -shm file: SQLite maps it into memory, and it is not on the disk proper
        files = [state / "outbox.db", state / "outbox.db-wal", state]
        chattr("+i", *files)
        try:
            assert post_one(port, devices[1]) == "5.03"
            assert post_one(port, devices[2]) == "5.03"
        finally:
            chattr("-i", *files)
        wait_until(lambda: post_one(port, devices[1]) == "2.04", 30, "writes to succeed again")
        assert outbox_depth(settings) == 2


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_disk_answers_503_and_recovers(tmp_path: Path) -> None:
    """A real full file system: a 2 MiB tmpfs, filled up by another file."""
    devices = write_registry(tmp_path / "registry.csv", 3)
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        settings = edge_settings(tmp_path, state_dir=disk / "state")
        with GatewayThread(settings):
            port = coap_port(settings)
            assert post_one(port, devices[0]) == "2.04"
            filler = disk / "filler"
            with open(filler, "wb") as fh, contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            codes = [post_one(port, devices[i % 3]) for i in range(1, 40)]
            assert "5.03" in codes
            filler.unlink()
            wait_until(lambda: post_one(port, devices[1]) == "2.04", 30, "writes to succeed")
            # no false yes: every uplink answered 2.04 is in the outbox
            assert outbox_depth(settings) >= 2 + codes.count("2.04")
