"""docs/run-on-servers.md cannot drift from the code: this test runs exactly the commands of
the page's marked blocks (``<!-- step: once|serve NAME|wait -->``), with the page's ports moved
to free ones and its state folder to a temporary one, against real Mosquitto (started from
``deploy/mosquitto.conf`` as shipped, only its port moved) and real influxd, until the reading
the page sends is in the API. The ``install`` block is not run (it changes the machine); its
packages are checked against ``deploy/install-system-deps.sh``."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.servers import ROOT, InfluxServer, ensure_binary, free_port, free_udp_port

PAGE = ROOT / "docs" / "run-on-servers.md"
STEP = re.compile(r"<!-- step: ([a-z]+)(?: ([a-z-]+))? -->\n```sh\n(.*?)```", re.S)
#: the page's defaults -> this run's
PORTS = ("1883", "8086", "5683", "8000", "9101", "9102")


def steps() -> list[tuple[str, str, str]]:
    return [(m.group(1), m.group(2) or "", m.group(3)) for m in STEP.finditer(PAGE.read_text())]


def test_the_page_has_the_steps_this_test_runs() -> None:
    kinds = [k for k, _, _ in steps()]
    assert kinds[0] == "install" and kinds.count("serve") == 5 and kinds[-1] == "wait"
    install = next(text for k, _, text in steps() if k == "install")
    deps = (ROOT / "deploy" / "install-system-deps.sh").read_text()
    for package in ("mosquitto", "influxdb", "libcoap3-bin"):
        assert package in install and package in deps


def test_the_pages_commands_bring_a_reading_to_the_api(tmp_path: Path) -> None:
    for binary in ("mosquitto", "influxd", "coap-client-notls", "curl"):
        ensure_binary(binary)
    state = tmp_path / "citysense"
    mapping = {port: str(free_udp_port() if port == "5683" else free_port()) for port in PORTS}
    influx = InfluxServer(tmp_path / "influxd", port=int(mapping["8086"]))
    # a checkout of our own: deploy/mosquitto.conf as shipped, only the listener's port moved
    work = tmp_path / "work"
    (work / "deploy").mkdir(parents=True)
    conf = (ROOT / "deploy" / "mosquitto.conf").read_text()
    assert "\nlistener 1883 127.0.0.1\n" in conf
    (work / "deploy" / "mosquitto.conf").write_text(
        conf.replace("listener 1883 ", f"listener {mapping['1883']} ")
    )

    def local(text: str) -> str:
        text = text.replace("/var/lib/citysense", str(state))
        text = text.replace("/etc/influxdb/influxdb.conf", str(influx.conf))
        for default, port in mapping.items():
            text = re.sub(rf"(?<=:){default}\b|(?<=listener ){default}\b", port, text)
        return text

    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env = {k: v for k, v in env.items() if not k.startswith("CITYSENSE_")}
    servers: list[tuple[str, subprocess.Popen[bytes]]] = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def tails() -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in logs.iterdir()
        )

    try:
        for kind, name, text in steps():
            command = local(text)
            if kind == "install":
                continue
            if kind == "once":
                done = subprocess.run(
                    ["bash", "-euo", "pipefail", "-c", command],
                    cwd=work,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}\n{tails()}"
                if "coap-client" in command:
                    assert "4." not in done.stdout + done.stderr, done.stdout + done.stderr
            elif kind == "serve":
                with open(logs / f"{name}.log", "wb") as out:
                    proc = subprocess.Popen(
                        ["bash", "-c", "exec " + command.strip()],
                        cwd=work,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                servers.append((name, proc))
            else:  # wait: retried until it succeeds
                deadline = time.monotonic() + 90
                while True:
                    done = subprocess.run(
                        ["bash", "-euo", "pipefail", "-c", command],
                        cwd=work,
                        env=env,
                        capture_output=True,
                        timeout=30,
                        check=False,
                    )
                    if done.returncode == 0:
                        break
                    for server, proc in servers:
                        assert proc.poll() is None, f"{server} exited\n{tails()}"
                    assert time.monotonic() < deadline, f"never true: {command}\n{tails()}"
                    time.sleep(0.5)
        # the page's servers stop cleanly, the gateway saying what stays in its outbox
        for server, proc in reversed(servers):
            os.killpg(proc.pid, signal.SIGTERM)
            code = proc.wait(30)
            if server in ("ingest", "gateway", "api"):
                assert code == 0, f"{server} exited {code}\n{tails()}"
        gateway_log = (logs / "gateway.log").read_text()
        assert "the outbox is empty, every reading is confirmed stored" in gateway_log, tails()
        broker_log = (logs / "broker.log").read_text()
        assert "Error" not in broker_log, broker_log
    finally:
        for _, proc in servers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        shutil.rmtree(state, ignore_errors=True)
