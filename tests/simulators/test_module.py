"""The simulated NB-IoT modules, spoken to over their ptys with plain pyserial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import serial

from citysense.errors import ConfigError
from citysense.registry import load_registry
from simulators.module import SimulatedModule, luhn_digit, parse_faults, sensor_devices
from simulators.module.core import SENSOR_COUNT


class Port:
    """A bare serial client: write a command, read until a final result."""

    def __init__(self, device: str) -> None:
        self.serial = serial.Serial(device, 115200, timeout=0.05)

    def close(self) -> None:
        self.serial.close()

    def read_until(self, *ends: bytes, within: float = 5.0) -> bytes:
        buf = b""
        deadline = time.monotonic() + within
        while not any(end in buf for end in ends):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {ends!r} in {buf!r}")
            buf += self.serial.read(4096)
        return buf

    def at(self, command: str, *ends: bytes, within: float = 5.0) -> bytes:
        self.serial.write(command.encode() + b"\r")
        return self.read_until(*(ends or (b"OK\r\n", b"ERROR")), within=within)


@pytest.fixture
def port_of() -> Iterator[object]:
    opened: list[tuple[SimulatedModule, Port]] = []

    def make(dialect: str, **kw: object) -> tuple[SimulatedModule, Port]:
        sim = SimulatedModule(dialect, speed=50, **kw).start()  # type: ignore[arg-type]
        port = Port(sim.device)
        opened.append((sim, port))
        deadline = time.monotonic() + 10
        while b"OK" not in port.at("AT", b"OK\r\n", b"ERROR", b"RDY", b"READY\r\n"):
            assert time.monotonic() < deadline
        return sim, port

    yield make
    for sim, port in opened:
        port.close()
        sim.stop()


def wait_registered(port: Port) -> None:
    deadline = time.monotonic() + 10
    while not port.at("AT+CEREG?").replace(b" ", b"").startswith(b"\r\n+CEREG:0,1"):
        assert time.monotonic() < deadline, "never registered"
        time.sleep(0.02)


def test_bc95_has_no_space_after_colon_and_echo_until_ate0(port_of) -> None:  # type: ignore[no-untyped-def]
    sim, port = port_of("bc95")
    assert port.at("AT+CGSN=1") == b"AT+CGSN=1\r\r\n+CGSN:" + sim.imei.encode() + b"\r\n\r\nOK\r\n"
    port.at("ATE0")
    assert port.at("AT+CSQ").startswith(b"\r\n+CSQ:")
    assert port.at("AT+NCCID") == b"\r\n+NCCID:" + sim.iccid.encode() + b"\r\n\r\nOK\r\n"
    assert port.at("AT+CMEE=1") == b"\r\nOK\r\n"
    assert port.at("AT+NSOCL=3") == b"\r\n+CME ERROR:530\r\n"
    stats = port.at("AT+NUESTATS").decode()
    assert "Signal power:-" in stats and "\r\nECL:" in stats and "CURRENT BAND:8" in stats


@pytest.mark.parametrize("dialect", ["sim7020", "bc66"])
def test_mediatek_families_put_a_space_after_colon(port_of, dialect: str) -> None:  # type: ignore[no-untyped-def]
    sim, port = port_of(dialect)
    port.at("ATE0")
    assert port.at("AT+CGSN=1") == b"\r\n+CGSN: " + sim.imei.encode() + b"\r\n\r\nOK\r\n"
    assert port.at("AT+CSQ").startswith(b"\r\n+CSQ: ")


def test_bc95_socket_read_in_parts_reports_remaining(port_of) -> None:  # type: ignore[no-untyped-def]
    sim, port = port_of("bc95")
    port.at("ATE0")
    wait_registered(port)
    assert port.at("AT+NSOCR=DGRAM,17,5683,1") == b"\r\n1\r\n\r\nOK\r\n"
    assert port.at("AT+NSOCR=DGRAM,17,5683,1") == b"\r\nERROR\r\n"  # port in use
    assert sim.inject_datagram(b"hello world", "203.0.113.5:5683")
    assert b"+NSONMI:1,11" in port.read_until(b"+NSONMI:1,11\r\n")
    first = port.at("AT+NSORF=1,5")
    assert first == b"\r\n1,203.0.113.5,5683,5,68656C6C6F,6\r\n\r\nOK\r\n"
    assert sim.delivered == []  # not all of it has left the module yet
    rest = port.at("AT+NSORF=1,512")
    assert rest == b"\r\n1,203.0.113.5,5683,6,20776F726C64,0\r\n\r\nOK\r\n"
    assert sim.delivered == [b"hello world"]
    assert port.at("AT+NSORF=1,512") == b"\r\nOK\r\n"
    sent = port.at("AT+NSOST=1,203.0.113.9,5683,2,4142,7")
    assert sent.startswith(b"\r\n1,2\r\n\r\nOK\r\n")
    if b"+NSOSTR:1,7,1\r\n" not in sent:  # the send report follows, maybe in the same read
        port.read_until(b"+NSOSTR:1,7,1\r\n")
    assert sim.sent == [("203.0.113.9:5683", b"AB")]


def test_sim7020_counts_hex_characters_binds_and_pushes_hex(port_of) -> None:  # type: ignore[no-untyped-def]
    sim, port = port_of("sim7020")
    port.at("ATE0")
    port.at("AT+CMEE=1")
    wait_registered(port)
    assert port.at("AT+CSOC=1,2,1") == b"\r\n+CSOC: 0\r\n\r\nOK\r\n"
    assert port.at("AT+CSOC=1,2,1") == b"\r\n+CSOC: 1\r\n\r\nOK\r\n"
    assert port.at("AT+CSOB=0,5683") == b"\r\nOK\r\n"  # binds the local port
    assert port.at("AT+CSOB=1,5683") == b"\r\n+CME ERROR: 3\r\n"  # taken by socket 0
    assert port.at("AT+CSOCL=1") == b"\r\nOK\r\n"
    assert port.at('AT+CSOCON=0,5683,"203.0.113.5"') == b"\r\nOK\r\n"
    assert port.at("AT+CSOSEND=0,10,48656C6C6F") == b"\r\nOK\r\n"  # hex characters
    assert port.at("AT+CSOSEND=0,5,48656C6C6F") == b"\r\n+CME ERROR: 50\r\n"  # not bytes
    assert port.at('AT+CSOSEND=0,0,"Hello Light"') == b"\r\nOK\r\n"  # quoted text
    assert [p for _, p in sim.sent] == [b"Hello", b"Hello Light"]
    ceng = port.at("AT+CENG?").decode()
    assert ceng.split("\r\n")[1].split(",")[11] == "2300"  # tx power in centi-dBm
    assert sim.inject_datagram(b"hello SIM7020E")
    urc = port.read_until(b"\r\n+CSONMI: 0,28,68656C6C6F2053494D3730323045\r\n")
    assert urc.endswith(b"+CSONMI: 0,28,68656C6C6F2053494D3730323045\r\n")


def test_bc66_prompt_send_and_raw_receive(port_of) -> None:  # type: ignore[no-untyped-def]
    sim, port = port_of("bc66")
    # BC66 echo ends in a bare CR
    assert port.at("AT+QGMR").startswith(b"AT+QGMR\r\r\n")
    port.at("ATE0")
    wait_registered(port)
    port.at("AT+CMEE=1")
    # a listening "UDP SERVICE" is BG96's, not the BC66's
    assert port.at('AT+QIOPEN=1,0,"UDP SERVICE","127.0.0.1",0,5683,1') == (
        b"\r\n+CME ERROR: 552\r\n"
    )
    assert port.at('AT+QIOPEN=1,0,"UDP","203.0.113.5",5683,0,1', b"+QIOPEN: 0,0\r\n")
    port.serial.write(b"AT+QISEND=0,5\r")
    assert port.read_until(b"> ").endswith(b"> ")
    port.serial.write(b"12345")
    assert b"SEND OK" in port.read_until(b"SEND OK\r\n")
    assert port.at("AT+QISEND=0,2,4142", b"SEND OK\r\n").startswith(b"\r\nOK\r\n")
    assert sim.sent == [("203.0.113.5:5683", b"12345"), ("203.0.113.5:5683", b"AB")]
    qeng = port.at("AT+QENG=0").decode().split("\r\n")[1].split(",")
    assert -140 <= int(qeng[5]) <= -40 and int(qeng[12]) == 14  # whole dBm, not tenths
    assert sim.inject_datagram(b"a\r\n>b")
    got = port.read_until(b'"recv",0,5\r\na\r\n>b\r\n')
    assert got.endswith(b'\r\n+QIURC: "recv",0,5\r\na\r\n>b\r\n')


def test_bc95_announces_only_when_the_buffer_was_empty(port_of) -> None:  # type: ignore[no-untyped-def]
    sim, port = port_of("bc95")
    port.at("ATE0")
    wait_registered(port)
    assert "TX power:-32768" in port.at("AT+NUESTATS").decode()  # nothing sent yet
    port.at("AT+NSOCR=DGRAM,17,5683,1")
    assert sim.inject_datagram(b"one", "203.0.113.5:5683")
    assert sim.inject_datagram(b"two", "203.0.113.5:5683")
    port.read_until(b"+NSONMI:1,3\r\n")
    assert port.at("AT+NSORF=1,512").startswith(b"\r\n1,203.0.113.5,5683,3,6F6E65,3\r\n")
    assert port.at("AT+NSORF=1,512").startswith(b"\r\n1,203.0.113.5,5683,3,74776F,0\r\n")
    assert port.at("AT+NSORF=1,512") == b"\r\nOK\r\n"
    assert port.serial.read(4096) == b""  # one URC for the two datagrams
    assert sim.inject_datagram(b"three", "203.0.113.5:5683")
    port.read_until(b"+NSONMI:1,5\r\n")  # empty again: announced
    port.at("AT+NSOST=1,203.0.113.9,5683,2,4142")
    assert "TX power:230" in port.at("AT+NUESTATS").decode()


def test_bc95_busy_fault_answers_the_retryable_errors(port_of) -> None:  # type: ignore[no-untyped-def]
    sim, port = port_of("bc95")
    port.at("ATE0")
    port.at("AT+CMEE=1")
    wait_registered(port)
    port.at("AT+NSOCR=DGRAM,17,5683,1")
    sim.set_faults({"busy": 1.0})
    codes = {port.at("AT+NSOST=1,203.0.113.9,5683,2,4142") for _ in range(12)}
    assert codes <= {
        b"\r\n+CME ERROR:159\r\n",
        b"\r\n+CME ERROR:536\r\n",
        b"\r\n+CME ERROR:537\r\n",
    }
    assert len(codes) >= 2 and sim.sent == []
    sim.set_faults({})
    assert port.at("AT+NSOST=1,203.0.113.9,5683,2,4142").startswith(b"\r\n1,2\r\n")


def test_reboot_prints_the_family_banner(port_of) -> None:  # type: ignore[no-untyped-def]
    sim, port = port_of("bc95")
    port.serial.write(b"AT+NRB\r")
    banner = port.read_until(b"Neul\r\n\r\nOK\r\n")
    assert b"REBOOTING" in banner and b"REBOOT_CAUSE_APPLICATION_AT" in banner
    # echo is back on after a reboot
    assert port.at("AT").startswith(b"AT\r")
    assert sim.stats["reboots"] == 1


def test_faults_are_parsed_with_rates() -> None:
    assert parse_faults(["garble=0.1", "drop"]) == {"garble": 0.1, "drop": 0.02}
    assert set(parse_faults(["all"])) >= {"garble", "drop", "reboot", "vanish", "junk"}
    assert parse_faults(["all=0.5"])["vanish"] == 0.5
    with pytest.raises(ConfigError):
        parse_faults(["melt"])
    with pytest.raises(ConfigError):
        parse_faults(["drop=2"])


def test_identity_is_seeded_and_luhn_valid() -> None:
    a = SimulatedModule("bc95", seed=9)
    b = SimulatedModule("bc95", seed=9)
    c = SimulatedModule("bc95", seed=10)
    try:
        assert a.imei == b.imei != c.imei
        assert len(a.imei) == 15 and a.imei[-1] == luhn_digit(a.imei[:-1])
    finally:
        for m in (a, b, c):
            m.stop()


def test_simulate_module_command_prints_pts_link_and_registry_rows(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rows_file = tmp_path / "module.csv"
    command = [sys.executable, "-m", "citysense", "simulate", "module", "--dialect", "sim7020"]
    command += ["--seed", "4", "--gateway", "gw-lab", "--registry-out", str(rows_file)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        pts = proc.stdout.readline().strip()
        device = proc.stdout.readline().strip()
        assert pts.startswith("/dev/pts/") and os.path.realpath(device) == pts
        assert os.path.islink(device)
        printed = [proc.stdout.readline() for _ in range(1 + 1 + SENSOR_COUNT)]
        assert printed[0] == "device,kind,district,site,lat,lon,gateway\n"
        assert rows_file.read_text() == "".join(printed)
        assert rows_file.stat().st_mode & 0o777 == 0o600
        registry = load_registry(rows_file)
        imei = printed[1].split(",")[0]
        assert imei.startswith("urn:imei:86643504") and registry[imei].gateway == "gw-lab"
        assert set(sensor_devices(4)) <= set(registry)
        port = Port(pts)  # the pty itself works as well as the link
        try:
            deadline = time.monotonic() + 30  # real module timings: a few seconds of boot
            while True:
                try:
                    if b"OK" in port.at("AT", b"OK\r\n", within=1.0):
                        break
                except AssertionError:
                    assert time.monotonic() < deadline, "the simulated module never answered"
            port.at("ATE0")
            assert port.at("AT+CGSN=1").startswith(b"\r\n+CGSN: " + imei[9:].encode())
        finally:
            port.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not os.path.exists(device)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
