"""Deployment figures: what a gateway box installs and what the gateway costs to run.

* Installed size of ``citysense[edge]`` and ``citysense[all]`` in fresh environments (their
  site-packages, pip and setuptools left out), against the base package's alone.
* The Debian package (``deploy/build-deb.sh``, xz as ``make deb``): file size, Installed-Size.
* ``citysense edge`` start-up: from ``exec`` to READY=1 on a notify socket of the bench's own
  (sent once the CoAP port answers), against the bare interpreter's start-up in the same run.
* ``citysense edge`` resident memory (VmRSS) idle, with 20 and with 10,000 registered devices,
  and after each of the 10,000 devices sent one uplink; against the bare interpreter's RSS.

Run: ``python -m bench.bench_deploy [--quick] [--no-write] [--results FILE]``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import ROOT, Result, Section, bench_parser, now_utc, run_section, vm_kib
from citysense.registry import Device, format_registry
from citysense.senml import CF_SENML_JSON, encode_values
from tests.servers import free_port, free_udp_port

log = logging.getLogger("bench.deploy")

WHEELS = ROOT / "build" / "wheels"
VENV_PY = Path(sys.executable)


def du(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())


def site_packages_size(venv: Path) -> int:
    (site,) = venv.glob("lib/python3*/site-packages")
    skip = ("pip", "setuptools", "_distutils_hack", "pkg_resources")
    return sum(du(p) for p in site.iterdir() if not p.name.startswith(skip))


def build_wheel(out: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("citysense-*.whl")
    return wheel


def installed_sizes(work: Path, wheel: Path) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for extra in ("", "edge", "all"):
        venv = work / f"venv-{extra or 'base'}"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                str(venv / "bin/python"),
                "-m",
                "pip",
                "install",
                "-q",
                "--find-links",
                str(WHEELS),
                f"{wheel}[{extra}]" if extra else str(wheel),
            ],
            check=True,
            capture_output=True,
        )
        sizes[extra or "base"] = site_packages_size(venv)
    return sizes


def deb_figures(work: Path, wheel: Path) -> dict[str, float]:
    env = dict(os.environ, CITYSENSE_WHEELS=str(WHEELS), TMPDIR=str(work))
    t0 = time.monotonic()
    out = subprocess.run(
        ["sh", str(ROOT / "deploy/build-deb.sh"), str(wheel), str(work / "deb")],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout.split()[-1]
    built = time.monotonic() - t0
    deb = Path(out)
    size_kib = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Installed-Size"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return {"size": deb.stat().st_size, "installed": int(size_kib) * 1024, "seconds": built}


def rss_of(pid: int) -> int:
    """Resident bytes of process ``pid``."""
    kib = vm_kib(pid, "VmRSS")
    if not kib:
        raise RuntimeError("no VmRSS")
    return kib * 1024


def bare_interpreter() -> tuple[float, int]:
    """Start-up seconds and RSS of the same interpreter doing nothing."""
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    startup = time.monotonic() - t0
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    time.sleep(1.0)
    rss = rss_of(proc.pid)
    proc.kill()
    proc.wait()
    return startup, rss


def registry(path: Path, n: int) -> list[str]:
    devices = [
        Device(
            f"urn:imei:86{i:013d}", "air_station", "zhengdong", "ruyi-lake", 34.7, 113.7, "gw-01"
        )
        for i in range(n)
    ]
    path.write_text(format_registry(devices))
    return [d.device for d in devices]


def con_post(mid: int, payload: bytes) -> bytes:
    # CoAP CON POST /up, Content-Format 110 (SenML JSON), a 2-byte token of its own
    head = bytes([0x42, 0x02, mid >> 8, mid & 0xFF, mid >> 8, mid & 0xFF])
    uri = bytes([0xB2]) + b"up"  # option 11 (Uri-Path), length 2
    cf = bytes([0x11, CF_SENML_JSON])  # option 12 (delta 1), length 1
    return head + uri + cf + b"\xff" + payload


def send_uplinks(port: int, devices: list[str], window: int = 64) -> int:
    """One uplink from each device (``window`` in flight); returns how many were answered."""
    answered = 0
    now = int(time.time() * 1000)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        pending: set[int] = set()
        for i, dev in enumerate(devices):
            mid = i % 65536
            s.sendto(
                con_post(mid, encode_values(dev, now, {"pm25": 12.0}, CF_SENML_JSON)),
                ("127.0.0.1", port),
            )
            pending.add(mid)
            while len(pending) >= window or (i == len(devices) - 1 and pending):
                try:
                    data = s.recv(2048)
                except TimeoutError:
                    return answered
                got = (data[2] << 8) | data[3]
                if got in pending:
                    pending.discard(got)
                    answered += 1
    return answered


def run_edge(work: Path, devices: int, uplinks: bool, settle: float = 0.0) -> dict[str, float]:
    """Start ``citysense edge``; seconds to READY=1, RSS idle (and after uplinks)."""
    reg = work / f"registry-{devices}.csv"
    ids = registry(reg, devices)
    notify_path = Path(tempfile.mkdtemp(prefix="cs-bench-")) / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(60)
    port = free_udp_port()
    state = work / f"state-{devices}-{time.monotonic_ns()}"
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), PYTHONUNBUFFERED="1")
    cmd = [
        str(VENV_PY.parent / "citysense"),
        "edge",
        "--coap",
        f"127.0.0.1:{port}",
        "--mqtt",
        f"mqtt://127.0.0.1:{free_port()}",
        "--registry",
        str(reg),
        "--state-dir",
        str(state),
        "--metrics-bind",
        "off",
        "--log-level",
        "WARNING",
    ]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    out: dict[str, float] = {}
    try:
        while b"READY=1" not in sock.recv(4096):
            pass
        out["startup"] = time.monotonic() - t0
        time.sleep(3.0)
        out["rss_idle"] = rss_of(proc.pid)
        if uplinks:
            out["answered"] = send_uplinks(port, ids)
            time.sleep(2.0)
            out["rss_after"] = rss_of(proc.pid)
            if settle:
                time.sleep(settle)  # past the CoAP deduplication window (60 s)
                out["rss_settled"] = rss_of(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
        sock.close()
        notify_path.unlink()
        notify_path.parent.rmdir()
    return out


def measure(quick: bool) -> Section:
    section = Section(
        "deploy", "Deployment: sizes, gateway start-up and memory", measured_at=now_utc()
    )

    def add(
        name: str, value: float, unit: str, vs: tuple[float, str] | None, goal: str = "",
        note: str = "",
    ) -> None:  # fmt: skip
        """A figure where less is better (time, memory, size), with its baseline."""
        base, base_name = vs if vs is not None else (None, "")
        section.add(Result(name, value, unit, goal=goal, baseline=base, note=note,
                           baseline_name=base_name, higher_is_better=False))  # fmt: skip

    mib = 2**20
    rounds = 2 if quick else 5
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        work = Path(tmp)
        bare = [bare_interpreter() for _ in range(rounds)]
        bare_start = statistics.median(b[0] for b in bare)
        bare_rss = (statistics.median(b[1] for b in bare) / mib, "bare interpreter")
        small = [run_edge(work, 20, False) for _ in range(rounds)]
        startup = statistics.median(r["startup"] for r in small)
        idle = statistics.median(r["rss_idle"] for r in small) / mib
        big = run_edge(work, 10_000, True, settle=0.0 if quick else 65.0)
        big_idle = big["rss_idle"] / mib
        add("citysense edge start-up to READY=1 (CoAP answering), 20 devices", startup, "s",
            (bare_start, "bare interpreter start-up"), note=f"median of {rounds}")  # fmt: skip
        add("citysense edge RSS idle, 20 devices", idle, "MiB", bare_rss, goal="≤ 40 MB")
        add("citysense edge start-up to READY=1, 10,000 devices", big["startup"], "s",
            (startup, "20 devices"))  # fmt: skip
        add("citysense edge RSS idle, 10,000 registered devices", big_idle, "MiB", bare_rss,
            goal="≤ 60 MB")  # fmt: skip
        add("citysense edge RSS after one uplink from each of 10,000 devices",
            big["rss_after"] / mib, "MiB", (big_idle, "idle"),
            note=f"{int(big['answered']):,} answered; the CoAP layer keeps each answer 60 s "
            "to recognise retransmissions")  # fmt: skip
        if "rss_settled" in big:
            add("citysense edge RSS 65 s after those uplinks", big["rss_settled"] / mib, "MiB",
                (big_idle, "idle"))  # fmt: skip
        wheel = build_wheel(work / "dist")
        sizes = {k: v / mib for k, v in installed_sizes(work, wheel).items()}
        add("installed size, citysense[edge] (site-packages)", sizes["edge"], "MiB",
            (sizes["all"], "citysense[all]"), note="pip and setuptools not counted")  # fmt: skip
        add("installed size, citysense[all] (site-packages)", sizes["all"], "MiB",
            (sizes["base"], "the base package alone (with cbor2)"))  # fmt: skip
        deb = deb_figures(work, wheel)
        add("citysense_<version>_all.deb ([all], xz)", deb["size"] / mib, "MiB", None,
            note=f"Installed-Size {deb['installed'] / mib:.0f} MiB; built in "
            f"{deb['seconds']:.0f} s with cached wheels")  # fmt: skip
    section.body = (
        "RSS is VmRSS from /proc after 3 s idle (2 s after the uplinks). Start-up runs from "
        "exec to the READY=1 datagram on the bench's notify socket, which the gateway sends "
        "once its CoAP socket is bound and served. Sizes count files and symlinks."
    )
    return section


def main(argv: list[str] | None = None) -> int:
    section = run_section(measure, bench_parser("bench.bench_deploy").parse_args(argv))
    print(json.dumps({r.name: r.value for r in section.results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
