"""The benchmark harness's shared plumbing: its command line, its report and its commands."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.harness import (
    Result,
    Section,
    bench_main,
    bench_parser,
    cpu_seconds,
    load_average,
    machine_info,
    mosquitto_pub_command,
    mosquitto_sub_command,
    mqttload_pub_command,
    run_section,
    vm_kib,
)
from bench.peers.common import peer_parser, write_connection


def _measure(quick: bool) -> Section:
    section = Section(
        "probe", "Probe", body="quick" if quick else "full", commands=["probe --flag"]
    )
    section.add(Result("figure", 2.0 if quick else 3.0, "x/s"))
    return section


def test_bench_parser_takes_the_common_options() -> None:
    parser = bench_parser("bench.bench_probe")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(["--quick", "--results", "out.md", "--port", "5"])
    assert (args.quick, args.no_write, args.results, args.port) == (True, False, Path("out.md"), 5)
    assert parser.prog == "python -m bench.bench_probe"
    defaults = parser.parse_args([])
    assert (defaults.quick, defaults.no_write, defaults.results) == (False, False, None)


def test_run_section_prints_and_merges_into_the_results_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "RESULTS.md"
    args = bench_parser("bench.bench_probe").parse_args(["--quick", "--results", str(target)])
    section = run_section(_measure, args)
    assert section.body == "quick"
    assert section.commands == ["python -m bench.bench_probe --quick", "probe --flag"]
    assert "## Probe" in capsys.readouterr().out
    text = target.read_text()
    assert "<!-- bench:section probe -->" in text and "| figure | 2 x/s |" in text


def test_run_section_with_no_write_leaves_the_file_alone(tmp_path: Path) -> None:
    target = tmp_path / "RESULTS.md"
    args = bench_parser("bench.bench_probe").parse_args(["--no-write", "--results", str(target)])
    assert run_section(_measure, args).body == "full"
    assert not target.exists()


def test_bench_main_runs_the_benchmark_with_the_common_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "RESULTS.md"
    assert bench_main("bench.bench_probe", _measure, ["--results", str(target)]) == 0
    assert "python -m bench.bench_probe\n" in capsys.readouterr().out
    assert "| figure | 3 x/s |" in target.read_text()


def test_mosquitto_commands() -> None:
    sub = mosquitto_sub_command(1883, "sub-1", "a/b", "-C", "10")
    assert sub == [
        *("mosquitto_sub", "-h", "127.0.0.1", "-p", "1883", "-c", "-i", "sub-1"),
        *("-q", "1", "-t", "a/b", "-C", "10"),
    ]
    pub = mosquitto_pub_command(1883, "a/b", b'{"x":1}', 5)
    assert pub == [
        *("mosquitto_pub", "-h", "127.0.0.1", "-p", "1883", "-q", "1", "-t", "a/b"),
        *("-m", '{"x":1}', "--repeat", "5", "--repeat-delay", "0"),
    ]


@pytest.mark.parametrize("raw", [True, False])
def test_mqttload_pub_command_is_what_mqttload_takes(raw: bool) -> None:
    cmd = mqttload_pub_command(1883, Path("load.txt"), 100, 2.5, raw=raw)
    assert cmd[1:3] == ["-m", "bench.peers.mqttload"]
    assert cmd[3:] == [
        *("pub", "--port", "1883", "--file", "load.txt", "--count", "100", "--seconds", "2.5"),
        *(["--raw"] if raw else []),
    ]


def test_peer_parser_and_write_connection() -> None:
    parser = peer_parser("bench.peers.probe")
    args = parser.parse_args(["--mqtt-port", "1883", "--influx-url", "http://h:8086", "--db", "d"])
    assert (args.mqtt_port, args.influx_url, args.db) == (1883, "http://h:8086", "d")
    with pytest.raises(SystemExit):  # --db is required
        parser.parse_args(["--mqtt-port", "1883", "--influx-url", "http://h:8086"])
    conn, path = write_connection("http://127.0.0.1:8086", "city db", timeout=5)
    assert (conn.host, conn.port, conn.timeout) == ("127.0.0.1", 8086, 5)
    assert path == "/write?db=city+db&precision=ms"


def test_process_figures_of_this_process() -> None:
    me = os.getpid()
    assert vm_kib(me, "VmRSS") > 0 and vm_kib(me, "VmHWM") >= vm_kib(me, "VmRSS")
    assert vm_kib(me, "NoSuchLine") == 0
    assert cpu_seconds(me) > 0
    assert len(load_average().split()) == 3
    assert machine_info()["load average (1/5/15 min)"].count(" ") == 2
