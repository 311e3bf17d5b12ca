"""``citysense simulate fleet`` as a command: runs for its duration or until SIGTERM, prints
its counters, exits 0; bad options exit 2."""

from __future__ import annotations

import asyncio
import signal
import sys

from simulators.city import generate_fleet
from tests.servers import ROOT, free_udp_port
from tests.simulators.standin_gateway import start_standin

COMMAND = [sys.executable, "-m", "citysense.cli", "simulate", "fleet"]


async def _run(args: list[str], port: int, terminate_after: int = 0) -> tuple[int, str, int]:
    devices = generate_fleet(12, 3, ["gw-01"])
    context, standin = await start_standin({d.device: d for d in devices}, port)
    try:
        proc = await asyncio.create_subprocess_exec(
            *COMMAND,
            *args,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        if terminate_after:
            # SIGTERM once the fleet has been acknowledged a few uplinks
            deadline = asyncio.get_running_loop().time() + 60
            while len(standin.stored) < terminate_after:
                assert asyncio.get_running_loop().time() < deadline, "no uplinks arrived"
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode is not None
        return proc.returncode, err.decode(), len(standin.stored)
    finally:
        await context.shutdown()


def test_fleet_command_runs_for_its_duration_and_reports() -> None:
    port = free_udp_port()
    args = ["--devices", "12", "--seed", "3", "--coap", f"127.0.0.1:{port}"]
    args += ["--report-interval", "30", "--duration", "2", "--senml-format", "cbor"]
    code, err, stored = asyncio.run(_run(args, port))
    assert code == 0, err
    summary = err.strip().splitlines()[-1]
    assert summary.startswith("devices 12  sent ")
    sent = int(summary.split("sent ")[1].split()[0])
    acknowledged = int(summary.split("acknowledged ")[1].split()[0])
    assert sent == acknowledged == stored > 0


def test_fleet_command_stops_cleanly_on_sigterm() -> None:
    port = free_udp_port()
    args = ["--devices", "12", "--seed", "3", "--coap", f"127.0.0.1:{port}"]
    args += ["--report-interval", "30"]
    code, err, stored = asyncio.run(_run(args, port, terminate_after=5))
    assert code == 0, err
    acknowledged = int(err.strip().splitlines()[-1].split("acknowledged ")[1].split()[0])
    assert acknowledged == stored >= 5


def test_fleet_command_refuses_bad_options() -> None:
    async def run(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *COMMAND, *args, cwd=ROOT, stderr=asyncio.subprocess.PIPE
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, err.decode()

    code, err = asyncio.run(run("--faults", "gremlins", "--duration", "1"))
    assert code == 2 and "gremlins" in err
    code, err = asyncio.run(run("--report-interval", "-5", "--duration", "1"))
    assert code == 2 and "report-interval" in err
    code, err = asyncio.run(run("--registry", "/nonexistent/registry.csv", "--duration", "1"))
    assert code == 2 and "registry" in err
