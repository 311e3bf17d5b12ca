"""Refused at start: wrong password, wrong CA, expired or foreign client certificate. Each
is one clear line and exit 2, and the outbox keeps every reading it held."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from citysense.model import Reading
from edge.outbox import SqliteOutbox
from provision.pki import Authority
from tests.edge.gateway import write_registry
from tests.servers import ROOT, ProvisionedMosquitto, free_port, free_udp_port

READINGS = 50
NOW = 1_780_000_000_000


def fill_outbox(
    state: Path, n: int = READINGS, *, prefix: str = "dev", now: int = NOW
) -> list[Reading]:
    readings = [
        Reading(f"{prefix}-{i}", "air_station", "d", "s", now + i, {"pm25": float(i)})
        for i in range(n)
    ]

    async def fill() -> None:
        async with SqliteOutbox(state / "outbox.db") as outbox:
            await outbox.add(readings)

    state.mkdir(mode=0o700, exist_ok=True)
    asyncio.run(fill())
    return readings


def outbox_rows(state: Path) -> int:
    import sqlite3

    with sqlite3.connect(state / "outbox.db") as db:
        return int(db.execute("SELECT count(*) FROM reading").fetchone()[0])


def run_citysense(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "citysense", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def edge_args(tmp_path: Path, broker: ProvisionedMosquitto, port: int, *extra: str) -> list[str]:
    registry = tmp_path / "registry.csv"
    if not registry.exists():
        write_registry(registry, 3, gateway="gw-01")
    return [
        "edge",
        "--gateway",
        "gw-01",
        "--registry",
        str(registry),
        "--coap",
        f"127.0.0.1:{free_udp_port()}",
        "--metrics-bind",
        f"127.0.0.1:{free_port()}",
        "--state-dir",
        str(tmp_path / "state"),
        "--mqtt",
        f"mqtts://127.0.0.1:{port}",
        *extra,
    ]


def write(path: Path, data: bytes | str) -> str:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def assert_refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("citysense: MQTT broker mqtts://127.0.0.1:"), result.stderr[-3000:]
    for word in words:
        assert word in last, last


@pytest.mark.parametrize(
    ("wrong", "words"),
    [
        ("password", ("not authorised", "--mqtt-password-file")),
        ("ca", ("certificate does not verify", "--mqtt-ca")),
    ],
)
def test_wrong_password_or_ca(
    wrong: str,
    words: tuple[str, ...],
    tmp_path: Path,
    secure_broker: ProvisionedMosquitto,
    broker_dir: Path,
) -> None:
    fill_outbox(tmp_path / "state")
    ca = str(broker_dir / "ca.crt")
    password = str(broker_dir / "clients" / "gw-01.password")
    if wrong == "password":
        password = write(tmp_path / "pw", "not-the-password\n")
    else:
        ca = write(tmp_path / "other-ca.crt", Authority("another CA").cert)
    result = run_citysense(
        *edge_args(
            tmp_path,
            secure_broker,
            secure_broker.port,
            "--mqtt-ca",
            ca,
            "--mqtt-username",
            "gw-01",
            "--mqtt-password-file",
            password,
        )
    )
    assert_refused(result, *words)
    assert outbox_rows(tmp_path / "state") == READINGS


@pytest.mark.parametrize("which", ["expired", "foreign"])
def test_rejected_client_certificate(
    which: str,
    tmp_path: Path,
    secure_broker: ProvisionedMosquitto,
    broker_dir: Path,
    authority: Authority,
) -> None:
    fill_outbox(tmp_path / "state")
    if which == "expired":
        issued = authority.issue(
            "gw-01", not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=10), days=1
        )
    else:
        issued = Authority("another CA").issue("gw-01")
    result = run_citysense(
        *edge_args(
            tmp_path,
            secure_broker,
            secure_broker.cert_port,
            "--mqtt-ca",
            str(broker_dir / "ca.crt"),
            "--mqtt-cert",
            write(tmp_path / "c.crt", issued.cert),
            "--mqtt-key",
            write(tmp_path / "c.key", issued.key),
        )
    )
    assert_refused(result, "rejected our certificate", "--mqtt-cert")
    assert outbox_rows(tmp_path / "state") == READINGS


def test_ingest_wrong_password(
    tmp_path: Path, secure_broker: ProvisionedMosquitto, broker_dir: Path
) -> None:
    result = run_citysense(
        "ingest",
        "--mqtt",
        f"mqtts://ingest:wrong%40pass@127.0.0.1:{secure_broker.port}",
        "--mqtt-ca",
        str(broker_dir / "ca.crt"),
        "--metrics-bind",
        "off",
        "--state-dir",
        str(tmp_path / "state"),
    )
    assert_refused(result, "not authorised")
    assert "wrong@pass" not in result.stderr and "wrong%40pass" not in result.stderr
