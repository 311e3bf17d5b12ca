"""``python -m bench`` (``make bench``): every benchmark in one run, into ``bench/RESULTS.md``.

Order: the machine's limits (:mod:`bench.limits`), the ingest comparison (citysense against
Node-RED, a naive and a batched Python writer, all from the same broker settings into the
same influxd, :mod:`bench.peers.run`), a py-spy profile of citysense's ingest hot path, then
each ``bench/bench_*.py`` in its own process (each appends its own section). A benchmark that
is missing, fails or runs out of time is reported in the "Run" section and the rest go on.

Loads are bounded in count and time; servers bind 127.0.0.1. ``--quick`` is a smoke run of a
few minutes; the full run stays under about 20 minutes.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import limits as limits_mod
from bench.harness import (
    BENCH_DIR,
    ROOT,
    WORK_DIR,
    InfluxServer,
    Result,
    Section,
    machine_info,
    make_payloads,
    now_utc,
    running_servers,
    versions,
    write_payload_file,
    write_results,
)
from bench.peers import nodered
from bench.peers import run as peers

log = logging.getLogger("bench")


@dataclass(frozen=True, slots=True)
class Load:
    """One ingest load: envelopes of ``per_message`` readings, bounded in count and time."""

    per_message: int
    messages: int
    seconds: float
    slow_seconds: float  #: time limit for a consumer known to be slow (naive writer)


QUICK_LOADS = (Load(50, 4_000, 15, 10), Load(1, 40_000, 15, 8))
FULL_LOADS = (Load(50, 12_000, 30, 12), Load(1, 120_000, 30, 12))
#: Rounds of every consumer, interleaved; the best round of each is kept (the machine is
#: shared: a round can lose the CPU to something else, never gain it).
QUICK_ROUNDS = 1
FULL_ROUNDS = 2

#: Goals from BENCH.md: (text, minimum ratio to the best peer, minimum readings/s).
GOALS = {
    50: ("≥ 2× best peer; ≥ 200k readings/s", 2.0, 200_000.0),
    1: ("≥ 1.6× best peer; ≥ 25k readings/s", 1.6, 25_000.0),
}


def _header(quick: bool, argv: list[str], load_at_start: str) -> str:
    info = machine_info()
    info["load average (1/5/15 min)"] = (
        f"{load_at_start} at the start, {info['load average (1/5/15 min)']} at the end"
    )
    vers = versions()
    cmd = "python -m bench " + " ".join(shlex.quote(a) for a in argv)
    lines = [
        f"Run {now_utc()} with `{cmd.strip()}` ({'quick smoke run' if quick else 'full run'}).",
        "",
        "Machine: "
        + ", ".join(f"{k} {v}" for k, v in info.items())
        + ". The machine is shared: compare ratios measured in the same run, never absolute "
        "figures across runs.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()) + ".",
        "",
        "Ratios: *vs baseline* is value ÷ the figure it is compared with in the same run; "
        "*vs machine limit* is value ÷ what the limiting server does alone (see "
        "`bench/README.md`).",
    ]
    return "\n".join(lines) + "\n"


def _rate_note(m: peers.Measurement) -> str:
    if m.error:
        return f"FAILED: {m.error}"
    parts = []
    if m.complete:
        parts.append(f"all {m.offered:,} stored, {m.lost or 0:,} lost")
    else:
        parts.append(
            f"time limit: {min(m.written, m.stored):,} of {m.offered:,} stored in {m.seconds:.0f} s"
        )
    if m.offered:
        n = max(min(m.written, m.offered), 1)
        parts.append(
            f"CPU per reading: consumer {m.cpu_seconds / n * 1e6:.1f} µs, "
            f"influxd {m.influx_cpu_seconds / n * 1e6:.1f} µs"
        )
    parts.extend(m.notes)
    return "; ".join(parts)


def ingest_comparison(
    influx: InfluxServer,
    lim: limits_mod.Limits,
    loads: tuple[Load, ...],
    with_node_red: bool,
    rounds: int = 1,
) -> tuple[Section, dict[int, peers.Measurement]]:
    """Every consumer on every load; citysense's ratios to the best peer and the limits."""
    section = Section(
        "ingest-peers",
        "Ingest: citysense against the peers a city would otherwise run",
        measured_at=now_utc(),
    )
    body: list[str] = []
    citysense_by_load: dict[int, peers.Measurement] = {}
    for load in loads:
        path = WORK_DIR / f"load-{load.per_message}.txt"
        write_payload_file(make_payloads(load.messages, load.per_message), path)
        consumers: list[tuple[peers.Consumer, float]] = [
            (peers.BATCHED, load.seconds),
            (peers.NAIVE, load.slow_seconds),
        ]
        if with_node_red:
            nr = peers.NODE_RED_JOIN if load.per_message == 1 else peers.NODE_RED
            consumers.append((nr, load.seconds))
        consumers.append((peers.CITYSENSE, load.seconds))
        if load.per_message > 1:
            consumers.append((peers.CITYSENSE_2, load.seconds))
        results: dict[str, peers.Measurement] = {}
        for rnd in range(rounds):
            for consumer, seconds in consumers:
                if rnd and consumer is peers.NAIVE:
                    continue  # bounded by its time limit, never the best peer: one round
                log.info("ingest %d/msg, round %d: %s", load.per_message, rnd + 1, consumer.name)
                m = peers.measure(consumer, influx, path, load.messages, load.per_message, seconds)
                log.info("  %s", m.summary())
                body.append(f"- round {rnd + 1}: {m.summary()}")
                old = results.get(consumer.key)
                if (
                    old is None
                    or (old.error and not m.error)
                    or (not m.error and m.rate > old.rate)
                ):
                    results[consumer.key] = m
        if load.per_message > 1:
            limit, limit_name = lim.influx_best, "influxd /write best"
        else:
            limit, limit_name = lim.mqtt_best, "Mosquitto QoS 1 best"
        peer_rates = {
            k: m.rate for k, m in results.items() if not k.startswith("citysense") and not m.error
        }
        best_key = max(peer_rates, key=lambda k: peer_rates[k], default="")
        best = peer_rates.get(best_key, 0.0)
        for key, m in results.items():
            goal, baseline, baseline_name, met = "", None, "", None
            if key == "citysense":
                goal, ratio_goal, floor = GOALS.get(load.per_message, ("", 0.0, 0.0))
                baseline = best or None
                baseline_name = f"best peer: {results[best_key].name}" if best_key else ""
                met = m.complete and m.rate >= floor and (not best or m.rate >= ratio_goal * best)
                citysense_by_load[load.per_message] = m
            elif key == "citysense-2":
                one = results.get("citysense")
                baseline = one.rate if one and not one.error else None
                goal, baseline_name = "≥ 1.6× one process", "one process"
                met = bool(baseline) and m.complete and m.rate >= 1.6 * (baseline or 0)
            note = _rate_note(m)
            if met is not None:
                note += "; goal met" if met else "; goal NOT met"
            section.add(
                Result(
                    f"ingest {load.per_message}/msg: {m.name}",
                    m.rate,
                    "readings/s",
                    goal,
                    baseline,
                    note,
                    baseline_name=baseline_name,
                    limit=limit,
                    limit_name=limit_name,
                )
            )
    section.body = (
        "Each consumer gets a fresh Mosquitto (the project's `deploy/mosquitto.conf`), its own "
        "database on the one influxd, and the same pre-generated envelopes "
        "(`citysense.envelope.encode_batch`; air-station readings of 4 environment metrics, so "
        "one reading is one point), sent at QoS 1 by a bare-socket publisher that outruns "
        "every consumer (see the limits). The clock runs from the first publish until influxd "
        "has accepted every reading, or the time limit; a `count()` query then proves how many "
        "distinct readings were stored. citysense acknowledges after the write; the peers "
        "acknowledge on receipt (a crash loses what they held). "
        f"{rounds} round(s) of every consumer, interleaved; the table shows each one's best "
        "round.\n\n" + "\n".join(body)
    )
    section.commands = [
        "python -m bench.peers.mqttload pub --raw --port P --file LOAD --count N --seconds S",
        "citysense ingest --mqtt mqtt://127.0.0.1:P --influx http://127.0.0.1:P --influx-api 1 "
        "--influx-db DB --state-dir DIR --metrics-bind off --client-id bench-ingest-I",
        "python -m bench.peers.naive|batched --mqtt-port P --influx-url URL --db DB",
        "node bench/node-red/node_modules/node-red/red.js --userDir DIR --settings DIR/settings.js flows.json",
        f"npm install --prefix bench/node-red {' '.join(nodered.PACKAGES)}",
    ]
    return section, citysense_by_load


def profile_section(influx: InfluxServer, loads: tuple[Load, ...]) -> Section:
    """py-spy over citysense's ingestor on each load (extra, untimed runs)."""
    section = Section(
        "ingest-profile", "Profile: citysense ingest hot path (py-spy)", measured_at=now_utc()
    )
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "py-spy"],
            capture_output=True,
            timeout=300,
            check=False,
        )
    if not spy.exists():
        section.body = "py-spy is not installed and `pip install py-spy` failed: no profile."
        return section
    parts = [
        "`py-spy record --rate 250 --format raw --nonblocking` on the ingestor during an extra "
        "run of each load (sampling slows it: these rates are not figures). Shares of samples "
        "over all threads, idle time excluded. Findings and proposed changes: "
        "`bench/profile.md`."
    ]
    for load in loads:
        path = WORK_DIR / f"load-{load.per_message}.txt"
        if not path.exists():
            write_payload_file(make_payloads(load.messages, load.per_message), path)
        m = peers.measure(
            peers.CITYSENSE,
            influx,
            path,
            load.messages,
            load.per_message,
            load.seconds,
            profile=True,
        )
        parts.append(f"### {load.per_message} reading(s) per message")
        if m.error or m.profile is None or not m.profile.exists():
            parts.append(f"Profiled run failed: {m.error or 'no py-spy output'}")
            continue
        parts.append(f"{m.summary()}.")
        parts.append(peers.summarize_profile(m.profile))
        section.commands.append(
            f"py-spy record --pid PID --rate 250 --format raw --nonblocking --output {m.profile}"
        )
    section.body = "\n\n".join(parts)
    return section


def run_other_benches(quick: bool, budget_s: float) -> list[tuple[str, str, float]]:
    """Run each ``bench/bench_*.py`` in its own process; (name, outcome, seconds) each."""
    outcomes: list[tuple[str, str, float]] = []
    expected = [
        "bench_gateway",
        "bench_ingest",
        "bench_api",
        "bench_simulators",
        "bench_alerts",
        "bench_quality",
    ]
    found = sorted(p.stem for p in BENCH_DIR.glob("bench_*.py"))
    names = [n for n in expected if n in found] + [n for n in found if n not in expected]
    for name in expected:
        if name not in found:
            outcomes.append((name, "missing: bench/" + name + ".py does not exist yet", 0.0))
    deadline = time.monotonic() + budget_s
    for name in names:
        left = deadline - time.monotonic()
        if left < 30:
            outcomes.append((name, "skipped: the run's time budget is spent", 0.0))
            continue
        cmd = [sys.executable, "-m", f"bench.{name}", *(["--quick"] if quick else [])]
        target = os.environ.get("BENCH_RESULTS")
        if target and '"--results"' in (BENCH_DIR / f"{name}.py").read_text():
            cmd += ["--results", target]  # its own option; the others read $BENCH_RESULTS
        log.info("running %s (at most %.0f s)", " ".join(cmd[1:]), left)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        t0 = time.monotonic()
        logfile = WORK_DIR / f"{name}.log"
        with open(logfile, "wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                rc = proc.wait(timeout=left)
                outcome = "ok" if rc == 0 else f"FAILED (exit {rc})"
            except subprocess.TimeoutExpired:
                # Its own process group: stop it and whatever servers it started.
                os.killpg(proc.pid, 15)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    proc.wait(10)
                outcome = f"INCOMPLETE (stopped after {left:.0f} s: the run's time budget)"
        elapsed = time.monotonic() - t0
        if outcome != "ok":
            tail = logfile.read_text(errors="replace").strip().splitlines()[-3:]
            outcome += ": " + " / ".join(t.strip() for t in tail)[-400:]
        log.info("%s: %s (%.0f s)", name, outcome, elapsed)
        outcomes.append((name, outcome, elapsed))
    return outcomes


def own_parts(
    parts: set[str],
    quick: bool,
    loads: tuple[Load, ...],
    with_node_red: bool,
    no_profile: bool,
    run_log: list[tuple[str, str, float]],
) -> None:
    """Limits, the ingest comparison and the profile, on one influxd of their own."""
    with running_servers("bench") as (broker, influx):
        lim = limits_mod.Limits()
        if "limits" in parts or "ingest" in parts:
            t0 = time.monotonic()
            try:
                section, lim = limits_mod.measure(broker, influx, quick)
                write_results([section])
                run_log.append(("limits", "ok", time.monotonic() - t0))
            except Exception as exc:
                log.exception("limits failed")
                run_log.append(("limits", f"FAILED: {exc}"[:400], time.monotonic() - t0))
        broker.stop()  # every ingest measurement gets a fresh broker
        if "ingest" in parts:
            t0 = time.monotonic()
            try:
                section, _ = ingest_comparison(
                    influx, lim, loads, with_node_red, QUICK_ROUNDS if quick else FULL_ROUNDS
                )
                write_results([section])
                run_log.append(("ingest comparison", "ok", time.monotonic() - t0))
            except Exception as exc:
                log.exception("ingest comparison failed")
                run_log.append(("ingest comparison", f"FAILED: {exc}"[:400], time.monotonic() - t0))
            if not no_profile:
                t0 = time.monotonic()
                try:
                    write_results([profile_section(influx, loads)])
                    run_log.append(("ingest profile", "ok", time.monotonic() - t0))
                except Exception as exc:
                    log.exception("profile failed")
                    run_log.append(
                        ("ingest profile", f"FAILED: {exc}"[:400], time.monotonic() - t0)
                    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few minutes")
    parser.add_argument("--no-node-red", action="store_true", help="skip the Node-RED peer")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument(
        "--results",
        type=Path,
        help="write to this file instead of bench/RESULTS.md (sets $BENCH_RESULTS)",
    )
    parser.add_argument(
        "--only",
        choices=("limits", "ingest", "others"),
        action="append",
        help="run only these parts (repeatable; default all)",
    )
    args = parser.parse_args(argv)
    if args.results:
        os.environ["BENCH_RESULTS"] = str(args.results.resolve())
    results_path = Path(os.environ.get("BENCH_RESULTS") or BENCH_DIR / "RESULTS.md")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parts = set(args.only or ("limits", "ingest", "others"))
    quick = bool(args.quick)
    loads = QUICK_LOADS if quick else FULL_LOADS
    started = time.monotonic()
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    with_node_red = not args.no_node_red
    run_log: list[tuple[str, str, float]] = []
    if with_node_red and "ingest" in parts:
        t0 = time.monotonic()
        try:
            nodered.install()
            run_log.append(("Node-RED install (npm)", "ok", time.monotonic() - t0))
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            with_node_red = False
            run_log.append(("Node-RED install (npm)", f"FAILED: {exc}"[:400], 0.0))
    load_at_start = machine_info()["load average (1/5/15 min)"]
    # A partial run keeps the header of the last whole run; its sections carry their dates.
    whole = parts == {"limits", "ingest", "others"}
    write_results([], header=_header(quick, argv, load_at_start) if whole else None)
    if "limits" in parts or "ingest" in parts:
        t0 = time.monotonic()
        try:
            own_parts(parts, quick, loads, with_node_red, bool(args.no_profile), run_log)
        except Exception as exc:  # servers that would not start: the other benches still run
            log.exception("limits and ingest failed")
            run_log.append(
                ("servers for limits and ingest", f"FAILED: {exc}"[:400], time.monotonic() - t0)
            )
    # The load files are large (up to ~140 MB): they are made again each run.
    for path in WORK_DIR.glob("load-*.txt"):
        path.unlink(missing_ok=True)
    (WORK_DIR / "limits-1.txt").unlink(missing_ok=True)
    if "others" in parts:
        budget = (7 if quick else 20) * 60 - (time.monotonic() - started)
        run_log.extend(run_other_benches(quick, max(budget, 300.0 if quick else 540.0)))
    total = time.monotonic() - started
    rows = ["| part | outcome | seconds |", "|---|---|---|"]
    rows += [
        f"| {name} | {outcome.replace('|', '/')} | {secs:.0f} |" for name, outcome, secs in run_log
    ]
    run_section = Section(
        "run" if whole else "run-partial",
        "Run" if whole else f"Partial run ({', '.join(sorted(parts))})",
        body=f"Total {total:.0f} s.\n\n" + "\n".join(rows),
        measured_at=now_utc(),
        commands=["make bench   # = python -m bench", "python -m bench --quick"],
    )
    write_results([run_section], header=_header(quick, argv, load_at_start) if whole else None)
    print(f"wrote {results_path} in {total:.0f} s")
    failed = [n for n, o, _ in run_log if o.startswith("FAILED")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
