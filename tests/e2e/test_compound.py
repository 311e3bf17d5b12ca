"""Faults that come together, each ending with the set check of :mod:`tests.e2e.pipeline`.

A single fault rarely finds the gap between "accepted" and "stored": the process survives it
and retries. These combine two, so that the only thing standing between a reading and its loss
is the design itself (the ingestor acknowledges after the write; the gateway deletes only what
the ingestor confirmed; the outbox survives a kill). CI size; ``CITYSENSE_SOAK=1`` for longer
outages.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import SOAK
from tests.e2e.pipeline import Pipeline, Service
from tests.e2e.test_accounting import FAULT_AT, LOAD_S, check, run_load
from tests.edge.test_faults import small_tmpfs
from tests.servers import InfluxServer, MosquittoServer, wait_until

OUTAGE_S = 40.0 if SOAK else 12.0

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


def metric(p: Pipeline, service: str, name: str) -> float:
    """One unlabelled value from a service's /metrics (0 when absent)."""
    proc = p.gateway if service == "edge" else p.ingestors[0]
    match = re.search(rf"^{re.escape(name)} (\S+)$", proc.metrics(), re.M)
    return float(match.group(1)) if match else 0.0


def kills_during_influxd_outage(
    influx: InfluxServer, *processes: Service | MosquittoServer
) -> Callable[[], None]:
    """A fault: influxd stops; 5 s in, ``processes`` are killed (-9) together, and started
    again (in the order given) 2 s later; influxd comes back after ``OUTAGE_S``."""

    def fault() -> None:
        influx.stop()
        time.sleep(5.0)
        for proc in processes:
            proc.kill()
        time.sleep(2.0)
        for proc in processes:
            proc.start()
        time.sleep(max(OUTAGE_S - 7.0, 1.0))
        influx.start()

    return fault


def test_ingestor_kill_9_during_influxd_outage(
    make_pipeline: Callable[..., Pipeline], influxd_private: InfluxServer
) -> None:
    """Writes are failing and retrying in the ingestor when it dies: nothing it held is lost."""
    p = make_pipeline()

    fault = kills_during_influxd_outage(influxd_private, p.ingestors[0])

    check(
        p,
        run_load(p, fault),
        "ingestor kill -9 during influxd outage",
        f"influxd down {OUTAGE_S:.0f} s, ingestor killed 5 s in, back after 2 s",
    )


def test_ingestor_kill_9_during_influxd_outage_without_resend(
    make_pipeline: Callable[..., Pipeline], influxd_private: InfluxServer
) -> None:
    """The same, with the gateway's re-send out of the picture (an hour's interval): the
    broker's redelivery of what the ingestor had not acknowledged must cover the crash on its
    own. Each layer holds by itself; the gateway's re-send is not an excuse for an early ack."""
    p = make_pipeline(gateway_args=("--resend-interval", "3600"))

    fault = kills_during_influxd_outage(influxd_private, p.ingestors[0])

    check(
        p,
        run_load(p, fault),
        "ingestor kill -9 during influxd outage, no re-send",
        "as above, the gateway's re-send interval 1 h: the broker's redelivery alone",
    )


def test_ingestor_and_mosquitto_kill_9_during_influxd_outage(
    make_pipeline: Callable[..., Pipeline],
    mosquitto: MosquittoServer,
    influxd_private: InfluxServer,
) -> None:
    """The ingestor and the broker die together while nothing can be written: neither the
    ingestor's memory nor the broker's unsaved queue survives, so only a gateway that still
    holds every unconfirmed batch (no confirmation before the write) can make it whole."""
    p = make_pipeline()

    fault = kills_during_influxd_outage(influxd_private, mosquitto, p.ingestors[0])

    check(
        p,
        run_load(p, fault),
        "ingestor and Mosquitto kill -9 during an influxd outage",
        f"influxd down {OUTAGE_S:.0f} s, both killed 5 s in, back after 2 s",
    )


def test_mosquitto_kill_9_while_ingestors_down(
    make_pipeline: Callable[..., Pipeline], mosquitto: MosquittoServer
) -> None:
    """The broker dies holding messages nobody consumed: the gateway's re-send covers them."""
    p = make_pipeline()

    def fault() -> None:
        p.ingestors[0].kill()
        time.sleep(4.0)  # the broker acknowledges and queues for the absent ingestor
        mosquitto.kill()
        time.sleep(2.0)
        mosquitto.start()
        time.sleep(1.0)
        p.ingestors[0].start()

    check(
        p,
        run_load(p, fault),
        "Mosquitto kill -9 while every ingestor is down",
        "ingestor down 4 s, then the broker killed and restarted",
    )


def test_back_pressure_reaches_the_gateway(
    make_pipeline: Callable[..., Pipeline], influxd_private: InfluxServer
) -> None:
    """influxd down long enough that the ingestor's receive window fills: the outbox grows,
    then drains once influxd is back."""
    p = make_pipeline(ingest_args=("--receive-maximum", "4"))
    depths: list[float] = []

    def fault() -> None:
        influxd_private.stop()
        deadline = time.monotonic() + OUTAGE_S
        while time.monotonic() < deadline:
            depths.append(metric(p, "edge", "citysense_edge_outbox_depth"))
            time.sleep(1.0)
        influxd_private.start()

    acc = run_load(p, fault)
    check(
        p,
        acc,
        "back-pressure: influxd down, receive window full",
        f"influxd down {OUTAGE_S:.0f} s, ingestor receive maximum 4",
    )
    assert max(depths) > 4 * 20, f"the outbox did not grow while the window was full: {depths}"
    wait_until(
        lambda: metric(p, "edge", "citysense_edge_outbox_depth") == 0,
        120,
        "the outbox to drain",
        interval=1.0,
    )


def test_gateway_kill_9_during_partition(make_pipeline: Callable[..., Pipeline]) -> None:
    """The outbox holds everything across a kill while nothing can be published."""
    p = make_pipeline(proxy=True)
    assert p.proxy is not None

    def fault() -> None:
        assert p.proxy is not None
        p.proxy.partition()
        time.sleep(4.0)
        p.gateway.kill()
        p.gateway.start()
        time.sleep(max(OUTAGE_S - 4.0, 1.0))
        p.proxy.heal()

    check(
        p,
        run_load(p, fault),
        "gateway kill -9 during a broker partition",
        f"blackholed {OUTAGE_S:.0f} s, gateway killed 4 s in and restarted",
    )


def test_disk_full_during_broker_outage(
    make_pipeline: Callable[..., Pipeline], mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    """The outbox cannot grow and cannot drain: 5.03 answers, and nothing answered 2.04 lost."""
    with small_tmpfs(tmp_path / "disk", "8m") as disk:
        p = make_pipeline(gateway_state=disk / "state")
        filler = disk / "filler"

        def fault() -> None:
            mosquitto.stop()
            with open(filler, "wb") as fh, contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            wait_until(
                lambda: p.counters.rejected.get("5.03", 0) > 0,
                60,
                "the gateway to answer 5.03 on a full disk",
                interval=0.5,
            )
            time.sleep(2.0)
            filler.unlink()
            mosquitto.start()

        acc = run_load(p, fault)
        check(
            p,
            acc,
            "gateway disk full during a broker outage",
            "broker stopped, the outbox's file system filled, both freed",
        )
        assert acc.rejected.get("5.03", 0) > 0, acc
        p.close()


@pytest.fixture(scope="session")
def clockshift(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A preload library that steps CLOCK_REALTIME only (see clockshift.c)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("no C compiler: `make test` installs build-essential")
    out = tmp_path_factory.mktemp("clockshift") / "clockshift.so"
    src = Path(__file__).with_name("clockshift.c")
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(out), str(src), "-ldl"], check=True)
    return out


def test_gateway_clock_stepped_back_and_forward(
    make_pipeline: Callable[..., Pipeline], clockshift: Path, tmp_path: Path
) -> None:
    """The gateway's wall clock jumps an hour back, then an hour ahead, mid-stream: readings
    keep their own times, none that should be accepted is refused, seq keeps growing."""
    shift = tmp_path / "clock-offset"
    shift.write_text("0\n")
    p = make_pipeline(
        gateway_env={"LD_PRELOAD": str(clockshift), "CLOCKSHIFT_FILE": str(shift)},
    )
    seqs: list[float] = []

    def fault() -> None:
        seqs.append(metric(p, "edge", "citysense_edge_next_seq"))
        shift.write_text("-3600\n")
        time.sleep((LOAD_S - FAULT_AT) / 3)
        seqs.append(metric(p, "edge", "citysense_edge_next_seq"))
        shift.write_text("3600\n")
        time.sleep((LOAD_S - FAULT_AT) / 3)
        seqs.append(metric(p, "edge", "citysense_edge_next_seq"))
        shift.write_text("0\n")

    acc = run_load(p, fault)
    check(
        p,
        acc,
        "gateway clock stepped",
        "wall clock -1 h, then +1 h, then back, mid-stream",
    )
    assert not acc.rejected, f"readings refused although only the gateway's clock moved: {acc}"
    seqs.append(metric(p, "edge", "citysense_edge_next_seq"))
    assert seqs == sorted(seqs) and seqs[-1] > seqs[0], f"seq did not keep growing: {seqs}"
    assert "system clock stepped back" in p.gateway.log_tail(200_000)
    stored_times = {t for _, _, t in p.stored_rows()}
    sent_times = {o.t for o in p.counters.outcomes}
    assert stored_times <= sent_times, "a reading was stored under a time its device never sent"
