"""Shared benchmark harness: real servers, a result record, the load and ``RESULTS.md``.

Every benchmark in ``bench/`` measures against real Mosquitto and influxd processes started
here on free loopback ports (the test suite's :mod:`tests.servers` classes), keeps its load
bounded in count and time, and reports :class:`Result` records grouped in a :class:`Section`.
:func:`write_results` merges sections into ``bench/RESULTS.md``: a section replaces the one
of the same key and everything else in the file (other sections, text appended by hand) is
kept, so each benchmark can be run on its own or from ``python -m bench``.

Invariants: servers bind 127.0.0.1 only and are stopped by PID; every figure compared to
another was measured in the same run on the same machine.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import html
import importlib.metadata
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from citysense.envelope import encode_batch
from citysense.model import Batch, Reading
from tests.servers import InfluxServer, MosquittoServer, free_port, wait_until

__all__ = [
    "BENCH_DIR",
    "RESULTS_PATH",
    "WORK_DIR",
    "InfluxServer",
    "MosquittoServer",
    "Result",
    "Section",
    "bench_main",
    "bench_parser",
    "cpu_seconds",
    "ensure_apt_binary",
    "free_port",
    "influx_points_written",
    "load_average",
    "load_payloads",
    "machine_info",
    "make_payloads",
    "mosquitto_pub_command",
    "mosquitto_sub_command",
    "mqttload_pub_command",
    "run_section",
    "running_servers",
    "versions",
    "vm_kib",
    "wait_until",
    "write_payload_file",
    "write_results",
]

log = logging.getLogger(__name__)

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
#: Scratch space for servers and payload files (git-ignored).
WORK_DIR = BENCH_DIR / ".work"
RESULTS_PATH = BENCH_DIR / "RESULTS.md"
NODE_RED_DIR = BENCH_DIR / "node-red"

#: The metrics of every benchmark reading: one domain, so one reading is one InfluxDB point.
BENCH_VALUES = ("pm25", "pm10", "temperature", "humidity")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Result:
    """One measured figure.

    ``baseline`` is the figure it is compared with (same unit, same run), ``limit`` the
    machine's limit for it (same unit); ``goal`` is the goal as text (``BENCH.md``);
    ``higher_is_better`` says how to read the ratios.
    """

    name: str
    value: float
    unit: str
    goal: str = ""
    baseline: float | None = None
    note: str = ""
    baseline_name: str = ""
    limit: float | None = None
    limit_name: str = ""
    higher_is_better: bool = True

    @property
    def ratio(self) -> float | None:
        """``value / baseline`` (``None`` when there is no baseline)."""
        if not self.baseline:
            return None
        return self.value / self.baseline

    @property
    def limit_ratio(self) -> float | None:
        """``value / limit`` (``None`` when there is no limit)."""
        if not self.limit:
            return None
        return self.value / self.limit


@dataclass(slots=True)
class Section:
    """A titled part of RESULTS.md: its figures, free text and the commands it ran."""

    key: str
    title: str
    results: list[Result] = field(default_factory=list)
    body: str = ""
    commands: list[str] = field(default_factory=list)
    measured_at: str = ""

    def add(self, result: Result) -> Result:
        self.results.append(result)
        return result

    def to_markdown(self) -> str:
        out = [f"## {self.title}", ""]
        if self.measured_at:
            out += [f"Measured {self.measured_at}.", ""]
        if self.results:
            out += [results_table(self.results), ""]
        if self.body.strip():
            out += [self.body.strip(), ""]
        if self.commands:
            out += ["Commands:", "", "```", *self.commands, "```", ""]
        return "\n".join(out)


def format_value(value: float) -> str:
    """A figure with a sensible number of digits (``123,456``, ``12.3``, ``0.123``)."""
    if value != value:  # NaN
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}×"


def results_table(results: Sequence[Result], section: str | None = None) -> str:
    """A markdown table of ``results`` (with a section column when ``section`` is set)."""
    head = ["figure", "value", "goal", "vs baseline", "vs machine limit", "note"]
    if section is not None:
        head.insert(0, "section")
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        base = ""
        if r.ratio is not None:
            base = f"{_ratio(r.ratio)} {r.baseline_name or 'baseline'} ({format_value(r.baseline or 0)})"
        lim = ""
        if r.limit_ratio is not None:
            lim = f"{r.limit_ratio:.0%} of {r.limit_name or 'limit'} ({format_value(r.limit or 0)})"
        cells = [
            r.name,
            f"{format_value(r.value)} {r.unit}",
            r.goal,
            base,
            lim,
            r.note,
        ]
        if section is not None:
            cells.insert(0, section)
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


_SECTION_RE = re.compile(
    r"<!-- bench:section (?P<key>[\w.-]+) -->\n(?P<body>.*?)<!-- /bench:section (?P=key) -->\n?",
    re.S,
)
_HEADER_RE = re.compile(r"<!-- bench:header -->\n.*?<!-- /bench:header -->\n?", re.S)
_RESULTS_RE = re.compile(r"<!-- bench:results (?P<json>.*?) -->")


def _section_block(section: Section) -> str:
    payload = html.escape(
        json.dumps([asdict(r) for r in section.results], separators=(",", ":")), quote=False
    ).replace("--", "&#45;&#45;")
    return (
        f"<!-- bench:section {section.key} -->\n"
        f"<!-- bench:results {payload} -->\n"
        f"{section.to_markdown()}"
        f"<!-- /bench:section {section.key} -->\n"
    )


def _parse_results(block: str) -> list[Result]:
    m = _RESULTS_RE.search(block)
    if not m:
        return []
    raw = html.unescape(m.group("json").replace("&#45;", "-"))
    try:
        return [Result(**item) for item in json.loads(raw)]
    except (ValueError, TypeError):
        return []


def _title_of(block: str) -> str:
    m = re.search(r"^## (.+)$", block, re.M)
    return m.group(1).strip() if m else ""


def write_results(
    sections: Sequence[Section],
    header: str | None = None,
    path: Path | None = None,
) -> Path:
    """Merge ``sections`` into ``path``; regenerate the header and the summary table.

    ``path`` defaults to ``$BENCH_RESULTS`` when set (``python -m bench --results FILE``
    sets it for every benchmark it runs), else ``bench/RESULTS.md``.

    A section replaces the section of the same key; other sections and any text not written
    by this function stay where they are. ``header`` (markdown: date, machine, versions)
    replaces the header's preamble; without it the previous preamble is kept.
    """
    if path is None:
        path = Path(os.environ.get("BENCH_RESULTS") or RESULTS_PATH)
    text = path.read_text() if path.exists() else ""
    if not text.strip():
        text = "# citysense benchmark results\n\n"
    old_header = _HEADER_RE.search(text)
    preamble = header
    if preamble is None and old_header:
        inner = old_header.group(0)
        preamble = inner.split("<!-- bench:preamble-end -->")[0]
        preamble = preamble.removeprefix("<!-- bench:header -->\n")
    if preamble is None:
        preamble = ""
    for section in sections:
        block = _section_block(section)
        pattern = re.compile(
            rf"<!-- bench:section {re.escape(section.key)} -->\n.*?"
            rf"<!-- /bench:section {re.escape(section.key)} -->\n?",
            re.S,
        )
        found = pattern.search(text)
        if found:
            text = text[: found.start()] + block + text[found.end() :]
        else:
            text = text.rstrip("\n") + "\n\n" + block
    summary: list[str] = []
    for m in _SECTION_RE.finditer(text):
        results = _parse_results(m.group("body"))
        if results:
            summary.append(results_table(results, section=_title_of(m.group("body"))))
    summary_md = "## Summary\n\n"
    if summary:
        # One table: drop the repeated heads of the per-section tables.
        first, *rest = summary
        summary_md += first + "".join("\n" + "\n".join(t.splitlines()[2:]) for t in rest)
    else:
        summary_md += "No figures yet."
    head_block = (
        "<!-- bench:header -->\n"
        + preamble.rstrip("\n")
        + "\n<!-- bench:preamble-end -->\n\n"
        + summary_md
        + "\n\n<!-- /bench:header -->\n"
    )
    if old_header:
        text = _HEADER_RE.sub(lambda _m: head_block, text, count=1)
    else:
        lines = text.split("\n", 1)
        rest_text = lines[1] if len(lines) > 1 else ""
        text = lines[0] + "\n\n" + head_block + rest_text.lstrip("\n")
        if not text.endswith("\n"):
            text += "\n"
    text = re.sub(r"\n{3,}", "\n\n", text)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- machine facts


def _first_line(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0].strip() if text else "not found"


def _version_in(cmd: Sequence[str]) -> str:
    """The first ``version X`` in a command's output (``not found`` when absent)."""
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    m = re.search(r"version (\S+)", out.stdout + out.stderr)
    return m.group(1).rstrip(".") if m else "not found"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages as ``/proc/loadavg`` gives them."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def machine_info() -> dict[str, str]:
    """nproc, memory, CPU model, kernel and the load average when asked."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    return {
        "nproc": str(os.cpu_count() or "unknown"),
        "memory": mem,
        "cpu": cpu,
        "kernel": platform.release(),
        "load average (1/5/15 min)": load_average(),
    }


def _pkg_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _node_pkg_version(name: str) -> str:
    pkg = NODE_RED_DIR / "node_modules" / name / "package.json"
    try:
        return str(json.loads(pkg.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "not installed"


def versions() -> dict[str, str]:
    """Versions of everything a figure depends on."""
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    mosq = _first_line([mosquitto, "-h"])
    influxd = shutil.which("influxd") or "influxd"
    return {
        "python": platform.python_version(),
        "mosquitto": mosq.removeprefix("mosquitto version ").strip(),
        "mosquitto-clients": _version_in(["mosquitto_pub", "--help"]),
        "influxd": _first_line([influxd, "version"]),
        "paho-mqtt": _pkg_version("paho-mqtt"),
        "aiocoap": _pkg_version("aiocoap"),
        "citysense": _pkg_version("citysense"),
        "node": _first_line(["node", "--version"]),
        "node-red": _node_pkg_version("node-red"),
        "node-red-contrib-influxdb": _node_pkg_version("node-red-contrib-influxdb"),
    }


def ensure_apt_binary(binary: str, package: str) -> str:
    """Path of ``binary``; installs Debian's ``package`` with apt-get when it is missing."""
    path = shutil.which(binary)
    if path:
        return path
    log.warning("%s is missing: installing the Debian package %s", binary, package)
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    if os.geteuid() != 0:
        cmd.insert(0, "sudo")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    path = shutil.which(binary)
    if not path:
        raise RuntimeError(f"{' '.join(cmd)} did not install {binary}:\n{result.stderr[-2000:]}")
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def vm_kib(pid: int, key: str) -> int:
    """A ``Vm*`` line of ``/proc/PID/status`` in KiB (``VmRSS``, ``VmHWM``; 0 when absent)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------- servers


@contextlib.contextmanager
def running_servers(name: str = "run") -> Iterator[tuple[MosquittoServer, InfluxServer]]:
    """A fresh Mosquitto (project settings) and influxd on free loopback ports."""
    work = WORK_DIR / f"{name}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    broker = MosquittoServer(work / "mosquitto")
    influx = InfluxServer(work / "influxd")
    broker.start()
    try:
        influx.start()
        try:
            yield broker, influx
        finally:
            influx.stop()
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def influx_points_written(influx: InfluxServer, db: str) -> int:
    """Points influxd accepted into ``db`` so far (its ``writePointsOk`` shard counters).

    Cheap to poll, unlike a ``count()`` query; counts a re-written point again.
    """
    with urllib.request.urlopen(f"{influx.url}/debug/vars", timeout=10) as r:
        stats = json.loads(r.read())
    total = 0
    for key, entry in stats.items():
        if not key.startswith("shard:") or not isinstance(entry, dict):
            continue
        if entry.get("tags", {}).get("database") == db:
            total += int(entry.get("values", {}).get("writePointsOk", 0))
    return total


def influx_count(influx: InfluxServer, db: str, measurement: str = "environment") -> int:
    """Distinct points stored in ``measurement`` of ``db`` (one query, run once at the end)."""
    q = f'SELECT count("{BENCH_VALUES[0]}") FROM "{measurement}"'
    params = urllib.parse.urlencode({"q": q, "db": db})
    with urllib.request.urlopen(f"{influx.url}/query?{params}", timeout=120) as r:
        data = json.loads(r.read())
    series = data["results"][0].get("series")
    if not series:
        return 0
    return int(series[0]["values"][0][1])


# --------------------------------------------------------------------------- load


def make_payloads(
    messages: int,
    per_message: int,
    *,
    devices: int = 10_000,
    gateways: int = 10,
    start_ms: int | None = None,
    tag: str = "b",
) -> list[tuple[str, bytes]]:
    """``messages`` envelopes of ``per_message`` readings, as (topic, payload).

    Every reading is a distinct point (device, time), so counting points in influxd after a
    run proves nothing was lost. Readings are ``air_station`` ones with :data:`BENCH_VALUES`
    only (one domain: one reading = one point); times lie in the hour before ``start_ms``.
    """
    now = start_ms if start_ms is not None else int(time.time() * 1000)
    total = messages * per_message
    steps = -(-total // devices)
    base = now - 3_600_000 if steps <= 3000 else now - steps * 1000 - 60_000
    out: list[tuple[str, bytes]] = []
    seqs = [0] * gateways
    i = 0
    for m in range(messages):
        g = m % gateways
        seqs[g] += 1
        readings = []
        for _ in range(per_message):
            dev = i % devices
            v = float(i % 97)
            readings.append(
                Reading(
                    device=f"bench-{tag}-{dev:06d}",
                    kind="air_station",
                    district=f"d{dev % 12:02d}",
                    site=f"s{dev % 240:03d}",
                    t=base + (i // devices) * 1000,
                    values={"pm25": v, "pm10": v * 1.5, "temperature": 21.5, "humidity": 40.0},
                )
            )
            i += 1
        gw = f"gw-bench-{g:02d}"
        body = encode_batch(Batch(gateway=gw, seq=seqs[g], sent=now, readings=tuple(readings)))
        out.append((f"citysense/v1/{gw}/up", body))
    return out


def write_payload_file(payloads: Sequence[tuple[str, bytes]], path: Path) -> Path:
    """One ``topic<TAB>payload`` line per message (envelopes hold no newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for topic, body in payloads:
            f.write(topic.encode() + b"\t" + body + b"\n")
    return path


def load_payloads(path: Path) -> list[tuple[str, bytes]]:
    """The messages written by :func:`write_payload_file`."""
    out: list[tuple[str, bytes]] = []
    with open(path, "rb") as f:
        for line in f:
            topic, _, body = line.rstrip(b"\n").partition(b"\t")
            out.append((topic.decode(), body))
    return out


def now_utc() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def python_command(module: str, *args: str) -> list[str]:
    """``python -m module args`` with this interpreter, for a benchmark subprocess."""
    return [sys.executable, "-m", module, *args]


def mqttload_pub_command(
    port: int, payload_file: Path, count: int, seconds: float, *, raw: bool
) -> list[str]:
    """``python -m bench.peers.mqttload pub``: up to ``count`` messages of ``payload_file``.

    ``raw`` picks the bare-socket publisher (2,000 QoS 1 in flight) over paho's.
    """
    args = ["pub", "--port", str(port), "--file", str(payload_file)]
    args += ["--count", str(count), "--seconds", str(seconds)]
    return python_command("bench.peers.mqttload", *args, *(["--raw"] if raw else []))


def mosquitto_sub_command(port: int, client_id: str, topic: str, *extra: str) -> list[str]:
    """``mosquitto_sub`` at QoS 1 in the persistent session ``client_id`` (``-c``)."""
    return [
        "mosquitto_sub",
        *("-h", "127.0.0.1", "-p", str(port)),
        *("-c", "-i", client_id, "-q", "1", "-t", topic),
        *extra,
    ]


def mosquitto_pub_command(port: int, topic: str, message: bytes, count: int) -> list[str]:
    """``mosquitto_pub``: ``message`` ``count`` times at QoS 1, back to back."""
    return [
        "mosquitto_pub",
        *("-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", topic),
        *("-m", message.decode(), "--repeat", str(count), "--repeat-delay", "0"),
    ]


# --------------------------------------------------------------------------- command line


def bench_parser(module: str) -> argparse.ArgumentParser:
    """The command line of ``python -m module``, with the options every benchmark takes."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}")
    parser.set_defaults(module=module)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch RESULTS.md")
    parser.add_argument(
        "--results",
        type=Path,
        metavar="FILE",
        help="write to this file instead of bench/RESULTS.md",
    )
    return parser


def run_section(measure: Callable[[bool], Section], args: argparse.Namespace) -> Section:
    """Run ``measure(args.quick)`` with INFO logging; print its section and merge it in.

    The command that ran it (``python -m module [--quick]``) heads the section's commands.
    The section goes to ``args.results`` (default: :func:`write_results`' file) unless
    ``args.no_write``.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    section = measure(args.quick)
    section.commands.insert(0, f"python -m {args.module}" + (" --quick" if args.quick else ""))
    print(section.to_markdown())
    if not args.no_write:
        write_results([section], path=args.results)
    return section


def bench_main(module: str, measure: Callable[[bool], Section], argv: list[str] | None) -> int:
    """The ``main`` of a benchmark with no options of its own: :func:`run_section`."""
    run_section(measure, bench_parser(module).parse_args(argv))
    return 0
