"""Edge -> Mosquitto (TLS + password, and TLS + client certificate) -> ingest -> influxd with
``auth-enabled`` (the writer user) end to end, checked as a set; the API reads with the
reader user, which cannot write; ``citysense api`` refuses the writer's credentials."""

from __future__ import annotations

import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx

from citysense.cli import main
from tests.edge.gateway import write_registry
from tests.provision.test_refusals import fill_outbox, outbox_rows, run_citysense
from tests.servers import (
    ROOT,
    InfluxServer,
    ProvisionedMosquitto,
    free_port,
    free_udp_port,
    wait_until,
)

N = 300
ADMIN = ("admin", "admin-pass-0123456789")


def spawn(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "citysense", *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=ROOT,
        )


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    assert proc.returncode == 0, log.read_text()[-3000:]


def test_secure_pipeline_end_to_end(
    tmp_path: Path, secure_broker: ProvisionedMosquitto, broker_dir: Path
) -> None:
    influx = InfluxServer(tmp_path / "influxd", admin=ADMIN)
    influx.start()
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        admin_pw = tmp_path / "admin.password"
        admin_pw.write_text(ADMIN[1] + "\n")
        users = tmp_path / "influx-users"
        assert (
            main(
                [
                    "deploy",
                    "influx",
                    "--influx",
                    influx.url,
                    "--admin-username",
                    ADMIN[0],
                    "--admin-password-file",
                    str(admin_pw),
                    "--output",
                    str(users),
                ]
            )
            == 0
        )
        for user in ("citysense_writer", "citysense_reader"):
            assert stat.S_IMODE((users / f"{user}.password").stat().st_mode) == 0o600
        reader_pw = (users / "citysense_reader.password").read_text().strip()
        # the reader may not write
        denied = httpx.post(
            f"{influx.url}/write",
            params={"db": "citysense"},
            content=b"environment,device=x pm25=1",
            auth=(("citysense_reader", reader_pw)),
        )
        assert denied.status_code == 403

        clients = broker_dir / "clients"
        ca = str(broker_dir / "ca.crt")
        storage = [
            "--influx",
            influx.url,
            "--influx-api",
            "1",
            "--influx-db",
            "citysense",
        ]
        ingest_log = tmp_path / "ingest.log"
        procs.append(
            (
                spawn(
                    "ingest",
                    "--mqtt",
                    f"mqtts://127.0.0.1:{secure_broker.port}",
                    "--mqtt-ca",
                    ca,
                    "--mqtt-username",
                    "ingest",
                    "--mqtt-password-file",
                    str(clients / "ingest.password"),
                    *storage,
                    "--influx-username",
                    "citysense_writer",
                    "--influx-password-file",
                    str(users / "citysense_writer.password"),
                    "--metrics-bind",
                    "off",
                    "--state-dir",
                    str(tmp_path / "ingest"),
                    log=ingest_log,
                ),
                ingest_log,
            )
        )
        now = int(time.time() * 1000) - 60_000
        expected: set[tuple[str, int, float]] = set()
        for gateway, auth in (
            (
                "gw-01",
                [
                    "--mqtt-username",
                    "gw-01",
                    "--mqtt-password-file",
                    str(clients / "gw-01.password"),
                ],
            ),
            (
                "gw-02",
                [
                    "--mqtt-cert",
                    str(clients / "gw-02.crt"),
                    "--mqtt-key",
                    str(clients / "gw-02.key"),
                ],
            ),
        ):
            state = tmp_path / gateway
            readings = fill_outbox(state, N, prefix=gateway, now=now)
            expected |= {(r.device, r.t, float(r.values["pm25"])) for r in readings}
            write_registry(tmp_path / f"{gateway}.csv", 2, gateway=gateway)
            port = secure_broker.port if gateway == "gw-01" else secure_broker.cert_port
            log = tmp_path / f"{gateway}.log"
            procs.append(
                (
                    spawn(
                        "edge",
                        "--gateway",
                        gateway,
                        "--registry",
                        str(tmp_path / f"{gateway}.csv"),
                        "--coap",
                        f"127.0.0.1:{free_udp_port()}",
                        "--metrics-bind",
                        "off",
                        "--state-dir",
                        str(state),
                        "--mqtt",
                        f"mqtts://127.0.0.1:{port}",
                        "--mqtt-ca",
                        ca,
                        "--batch-max-delay",
                        "0.05",
                        *auth,
                        log=log,
                    ),
                    log,
                )
            )

        def stored() -> set[tuple[str, int, float]]:
            rows = influx.rows('SELECT "device", "pm25" FROM "environment"')
            return {(str(d), int(t), float(v)) for t, d, v in rows}  # type: ignore[arg-type]

        wait_until(lambda: len(stored()) >= 2 * N, 90, "every reading in influxd")
        assert stored() == expected
        for gateway in ("gw-01", "gw-02"):
            wait_until(lambda g=gateway: outbox_rows(tmp_path / g) == 0, 60, "confirmations")
        for proc, log in reversed(procs):
            stop(proc, log)
        procs.clear()

        # the API reads with the reader user ...
        keys = tmp_path / "keys.toml"
        api_port = free_port()
        api_log = tmp_path / "api.log"
        reader = [
            *storage,
            "--influx-username",
            "citysense_reader",
            "--influx-password-file",
            str(users / "citysense_reader.password"),
            "--api-keys-file",
            str(keys),
            "--state-dir",
            str(tmp_path / "api"),
        ]
        key = _new_key(keys)
        procs.append(
            (spawn("api", "--bind", f"127.0.0.1:{api_port}", *reader, log=api_log), api_log)
        )
        url = f"http://127.0.0.1:{api_port}/api/v1/environment/series"
        params = {
            "metric": "pm25",
            "agg": "count",
            "every": "1h",
            "group_by": "device",
            "start": str(now - 3_600_000),
            "end": str(now + 3_600_000),
        }

        def answer() -> httpx.Response | None:
            try:
                return httpx.get(url, params=params, headers={"Authorization": f"Bearer {key}"})
            except httpx.HTTPError:
                return None

        wait_until(lambda: (r := answer()) is not None and r.status_code == 200, 30, "the API")
        body = answer()
        assert body is not None
        assert "gw-01-0" in body.text and "gw-02-0" in body.text, body.text[:500]
        # ... and refuses to start with the writer's
        writer = run_citysense(
            "api",
            "--bind",
            f"127.0.0.1:{free_port()}",
            *storage,
            "--influx-username",
            "citysense_writer",
            "--influx-password-file",
            str(users / "citysense_writer.password"),
            "--state-dir",
            str(tmp_path / "api2"),
        )
        assert writer.returncode == 2, writer.stderr[-2000:]
        assert "can write" in writer.stderr.strip().splitlines()[-1]
    finally:
        for proc, _ in procs:
            proc.kill()
            proc.wait(10)
        influx.stop()


def _new_key(keys: Path) -> str:
    """A fresh operator key: add one and read what was printed."""
    out = run_citysense(
        "api", "keys", "add", "--file", str(keys), "--name", "e2e", "--role", "operator"
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()
