"""Data-quality and forecast benchmark: detection scored on injected faults, forecast skill.

A seeded simulated year of 300 air stations (six districts, every station reporting every
5 minutes) with sensor faults injected at their default rates (``simulators.sensor_faults``):

* **Detection**, on held-out months (the thresholds in the catalog were set by hand on another
  seed and month): every check of ``analytics.quality`` run over each station's series as the
  API runs them (raw reports for stuck and spike; hourly means against the district's other
  stations for tamper; daily medians for drift). Per check: recall (injected episodes with an
  overlapping flag of the expected reason), precision (flags overlapping an injected episode
  of the expected fault on that device and metric), and false flags per 1,000 clean
  station-days (flags on a station-day with no injected fault at all).
* **Forecast** (``analytics.forecast``): trained on the district hourly means of the first
  nine months, scored at every hour of the last three: RMSE at 1, 6 and 24 h against
  persistence and the diurnal climatology (trailing 28-day mean by hour of day), and the
  empirical coverage of the 80 % interval.
* **Public data**: the same forecast model on the hourly NO2 series that ships inside the
  ``aqeval`` package on PyPI (a UK roadside site, 2001-2003, GPL-3.0; fetched with
  ``pip download --no-deps`` into ``bench/.work``, read from the wheel, never vendored):
  the first two years train, the third scores. Skipped with a note when it cannot be had.

Run: ``python -m bench.bench_quality [--quick] [--no-write]``.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import subprocess
import sys
import time
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from analytics import forecast as fc
from analytics import quality as q
from bench.harness import Result, Section, bench_main
from citysense.catalog import QUALITY
from simulators.city import generate_fleet
from simulators.models import DAY_MS, HOUR_MS, LOCAL_OFFSET_MS, CityModel
from simulators.sensor_faults import (
    DEFAULT_SENSOR_RATES,
    EXPECTED_REASON,
    SPIKE_METRICS,
    SensorFaults,
)

log = logging.getLogger("bench.quality")

SEED = 1
STATIONS = 300
YEAR_START = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp() * 1000) - LOCAL_OFFSET_MS
REPORT_MS = 300_000
CHUNK_DAYS = 10
#: months (0-based) held out for detection scoring
DETECTION_MONTHS = (1, 4, 7, 10)
TRAIN_DAYS = 273  #: January to September train the forecast; the rest scores it
#: history before each held-out month the checks see (drift needs a week of daily gaps)
LEAD_MS = 7 * DAY_MS
RAW_METRICS = ("pm25", "pm10", "no2", "o3", "co", "temperature", "humidity")
WORK = Path(__file__).resolve().parent / ".work"


@dataclass(frozen=True, slots=True)
class Flag:
    device: int
    reason: str
    metric: str
    start: int
    end: int


def _fleet() -> list:  # type: ignore[type-arg]
    stations = [d for d in generate_fleet(STATIONS * 15, seed=SEED) if d.kind == "air_station"]
    assert len(stations) >= STATIONS
    return stations[:STATIONS]


def month_ranges(days: int) -> list[tuple[int, int]]:
    """(start, end) epoch ms of each 30-day 'month' of the simulated year."""
    return [
        (YEAR_START + m * 30 * DAY_MS, YEAR_START + min((m + 1) * 30, days) * DAY_MS)
        for m in range((days + 29) // 30)
    ]


def run_detection(
    model: CityModel, faults: SensorFaults, start: int, end: int
) -> tuple[list[Flag], np.ndarray]:
    """Flags of every check over [start, end) and the pm25 hourly means (stations, hours)."""
    idx = model.kind_index["air_station"]
    phase = model.phase_ms(idx, REPORT_MS)
    n_rep = (end - start) // REPORT_MS
    t = start + np.arange(n_rep, dtype=np.int64)[:, None] * REPORT_MS + phase[None, :]
    cols: dict[str, list[np.ndarray]] = defaultdict(list)
    step = CHUNK_DAYS * 288
    for a in range(0, n_rep, step):
        vals = model.sample("air_station", idx, t[a : a + step])
        for m in RAW_METRICS:
            cols[m].append(np.asarray(vals[m], dtype=np.float64))
    raw = {m: np.concatenate(v) for m, v in cols.items()}
    flags: list[Flag] = []
    for j in range(idx.size):
        tj = t[:, j]
        for m in RAW_METRICS:
            for f in q.check_stuck(m, tj, raw[m][:, j], QUALITY[m]):
                flags.append(Flag(j, "stuck", m, f.start_ms, f.end_ms or end))
            for f in q.check_spike(m, tj, raw[m][:, j], QUALITY[m]):
                flags.append(Flag(j, "spike", m, f.start_ms, f.end_ms or end))
    hours = (end - start) // HOUR_MS
    hour_t = start + np.arange(hours, dtype=np.int64) * HOUR_MS
    hourly = {
        m: np.stack([q.hourly_means(t[:, j], raw[m][:, j], start, hours) for j in range(idx.size)])
        for m in ("pm25", "no2")
    }
    district = np.array([model.devices[i].district for i in idx])
    for j in range(idx.size):
        others = (district == district[j]) & (np.arange(idx.size) != j)
        for f in q.check_tamper(
            "pm25", hour_t, hourly["pm25"][j], hourly["pm25"][others], QUALITY["pm25"]
        ):
            flags.append(Flag(j, "tamper_suspect", "pm25", f.start_ms, f.end_ms or end))
        days = hours // 24
        day_t = start + np.arange(days, dtype=np.int64) * DAY_MS
        for m in ("pm25", "no2"):
            own = q.daily_medians(hourly[m][j])
            nb = np.stack([q.daily_medians(r) for r in hourly[m][others]])
            for f in q.check_drift(m, day_t, own, nb, QUALITY[m]):
                flags.append(Flag(j, "drift", m, f.start_ms, f.end_ms or end))
    return flags, hourly["pm25"]


def score(
    model: CityModel,
    faults: SensorFaults,
    flags: list[Flag],
    periods: list[tuple[int, int]],
) -> dict[str, dict[str, float]]:
    idx = model.kind_index["air_station"]
    pos = {model.devices[i].device: j for j, i in enumerate(idx)}
    # (station, fault, metric, start, end, counted): an episode counts for recall in the
    # month it starts in (one that only ends in a month is scored where it began); every
    # episode meeting a month or the week before it can make a flag true
    truth: list[tuple[int, str, str, int, int, bool]] = []
    for a, b in periods:
        for e in faults.episodes(model, a - LEAD_MS, b):
            if e.device in pos and e.fault != "reversal" and e.end_ms > a - LEAD_MS:
                counted = a <= e.start_ms < b
                truth.append((pos[e.device], e.fault, e.metric, e.start_ms, e.end_ms, counted))
        phase = model.phase_ms(idx, REPORT_MS)
        n_rep = (b - a) // REPORT_MS
        t = a + np.arange(n_rep, dtype=np.int64)[:, None] * REPORT_MS + phase[None, :]
        salt = model._static.salt[idx][None, :]
        mask = faults.spike_mask(np.broadcast_to(salt, t.shape), t)
        pick = faults._spike_pick(np.broadcast_to(salt, t.shape), t)
        for r, c in zip(*np.nonzero(mask), strict=True):
            metric = SPIKE_METRICS[
                min(int(pick[r, c] * len(SPIKE_METRICS)), len(SPIKE_METRICS) - 1)
            ]
            truth.append((int(c), "spike", metric, int(t[r, c]), int(t[r, c]) + 1, True))
    slack = {"drift": 7 * DAY_MS, "covered_inlet": 2 * HOUR_MS}
    by_dev: dict[int, list[tuple[int, str, str, int, int, bool]]] = defaultdict(list)
    for e in truth:
        by_dev[e[0]].append(e)

    def matches(f: Flag, e: tuple[int, str, str, int, int, bool]) -> bool:
        _, fault, metric, a, b, _ = e
        if EXPECTED_REASON[fault] != f.reason:
            return False
        if f.reason in ("stuck", "spike", "drift") and metric != f.metric:
            return False
        return f.start < b + slack.get(fault, 0) and f.end > a

    out: dict[str, dict[str, float]] = {}
    station_days = sum((b - a) // DAY_MS for a, b in periods) * idx.size
    scored_days = {
        d for a, b in periods for d in range((a - YEAR_START) // DAY_MS, (b - YEAR_START) // DAY_MS)
    }
    faulty_days: set[tuple[int, int]] = set()
    for dev, _, _, a, b, _ in truth:
        for d in range((a - YEAR_START) // DAY_MS, (b - 1 - YEAR_START) // DAY_MS + 1):
            if d in scored_days:
                faulty_days.add((dev, d))
    clean_days = station_days - len(faulty_days)
    ordered_days = sorted(scored_days)

    def first_scored_day(t: int) -> int:
        """The day a flag starting at ``t`` is counted on (a lead-in flag: its month's first)."""
        d = (t - YEAR_START) // DAY_MS
        return d if d in scored_days else next((x for x in ordered_days if x >= d), d)

    for fault, reason in EXPECTED_REASON.items():
        if fault == "reversal":
            continue
        eps = [e for e in truth if e[1] == fault and e[5]]
        mine = [f for f in flags if f.reason == reason]
        found = sum(any(matches(f, e) for f in mine if f.device == e[0]) for e in eps)
        true_flags = [f for f in mine if any(matches(f, e) for e in by_dev[f.device])]
        false_flags = [f for f in mine if f not in true_flags]
        clean_false = [
            f for f in false_flags if (f.device, first_scored_day(f.start)) not in faulty_days
        ]
        out[reason] = {
            "episodes": len(eps),
            "recall": found / len(eps) if eps else float("nan"),
            "flags": len(mine),
            "precision": len(true_flags) / len(mine) if mine else float("nan"),
            "false_per_1000": 1000.0 * len(clean_false) / max(clean_days, 1),
        }
    out["_"] = {"station_days": station_days, "clean_days": clean_days}
    return out


def district_hourly(model: CityModel, days: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """District hourly pm25 means over the year, (districts, hours), from every report."""
    idx = model.kind_index["air_station"]
    phase = model.phase_ms(idx, REPORT_MS)
    district = [model.devices[i].district for i in idx]
    names = sorted(set(district))
    member = np.array([[d == n for d in district] for n in names], dtype=np.float64)
    hours = days * 24
    sums = np.zeros((len(names), hours))
    counts = np.zeros((len(names), hours))
    step = CHUNK_DAYS * 288
    for a in range(0, days * 288, step):
        rows = min(step, days * 288 - a)
        t = YEAR_START + (a + np.arange(rows, dtype=np.int64))[:, None] * REPORT_MS + phase[None, :]
        v = np.asarray(model.sample("air_station", idx, t)["pm25"], dtype=np.float64)
        k = (t - YEAR_START) // HOUR_MS
        for h in np.unique(k).tolist():
            if h >= hours:
                continue
            sel = k == h
            sums[:, h] += member @ np.where(sel, v, 0.0).sum(axis=0)
            counts[:, h] += member @ sel.sum(axis=0)
    with np.errstate(invalid="ignore"):
        y = sums / counts
    hours_t = YEAR_START + np.arange(hours, dtype=np.int64) * HOUR_MS
    return hours_t, y, names


def score_forecast(
    hours: np.ndarray, y: np.ndarray, train_hours: int, offset_ms: int
) -> dict[str, float]:
    model = fc.fit(hours[:train_hours], y[:, :train_hours], offset_ms)
    last = hours.size - fc.HORIZONS - 1
    origins = np.arange(train_hours, last, dtype=np.int64)
    mean, low, high = fc.predict_at(model, hours, y, origins, offset_ms)
    z = np.log1p(np.maximum(y, 0.0))
    hod = fc.hour_of_day(hours, offset_ms)
    lin_prof = fc.trailing_profile(y, hod)
    del z
    di = np.arange(y.shape[0])[:, None]
    out: dict[str, float] = {}
    inside_all = []
    for h in (1, 6, 24):
        s = origins + h
        truth = y[:, s]
        out[f"rmse_{h}"] = _rmse(mean[:, :, h - 1], truth)
        out[f"persistence_{h}"] = _rmse(y[:, origins], truth)
        out[f"climatology_{h}"] = _rmse(lin_prof[di, origins[None, :], hod[s][None, :]], truth)
    for h in range(1, fc.HORIZONS + 1):
        truth = y[:, origins + h]
        ok = ~np.isnan(truth)
        inside = (truth >= low[:, :, h - 1]) & (truth <= high[:, :, h - 1])
        inside_all.append(inside[ok])
        if h in (1, 6, 24):
            out[f"coverage_{h}"] = float(inside[ok].mean())
    out["coverage"] = float(np.concatenate(inside_all).mean())
    out["origins"] = float(origins.size * y.shape[0])
    return out


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    d = (a - b).reshape(-1)
    d = d[~np.isnan(d)]
    return float(np.sqrt(np.mean(d * d)))


def public_series() -> tuple[np.ndarray, np.ndarray, str] | None:
    """Hourly NO2 of the data set shipped in the ``aqeval`` wheel, or None (with a log line)."""
    WORK.mkdir(parents=True, exist_ok=True)
    wheels = sorted(WORK.glob("aqeval-*.whl"))
    if not wheels:
        try:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "-q",
                    "-d",
                    str(WORK),
                    "aqeval==0.7.3",
                ],
                check=True,
                timeout=180,
                capture_output=True,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            log.warning("aqeval could not be downloaded: %s", exc)
            return None
        wheels = sorted(WORK.glob("aqeval-*.whl"))
    if not wheels:
        return None
    with zipfile.ZipFile(wheels[-1]) as z:
        raw = gzip.decompress(z.read("aqeval/data/aq_data.csv.gz")).decode()
    times, values = [], []
    for row in csv.DictReader(io.StringIO(raw)):
        dt = datetime.strptime(row["date"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        times.append(int(dt.timestamp() * 1000))
        values.append(float(row["no2"]) if row["no2"] not in ("", "NA") else np.nan)
    t = np.array(times, dtype=np.int64)
    start = t[0] // HOUR_MS * HOUR_MS
    hours = start + np.arange((t[-1] - start) // HOUR_MS + 1, dtype=np.int64) * HOUR_MS
    y = np.full(hours.size, np.nan)
    y[(t - start) // HOUR_MS] = values
    return hours, y[None, :], wheels[-1].name


def forecast_rows(
    section: Section, label: str, f: dict[str, float], goal_at_6: bool = False
) -> None:
    """RMSE at 1, 6 and 24 h against the better baseline, with the skill and coverage."""
    for h in (1, 6, 24):
        better = min(f[f"persistence_{h}"], f[f"climatology_{h}"])
        section.add(
            Result(
                f"{label} RMSE at {h} h",
                f[f"rmse_{h}"],
                "µg/m³",
                goal=">= 20% below the better baseline" if goal_at_6 and h == 6 else "",
                baseline=better,
                baseline_name="better of persistence and climatology",
                higher_is_better=False,
                note=(
                    f"persistence {f[f'persistence_{h}']:.1f}, climatology "
                    f"{f[f'climatology_{h}']:.1f}; skill {1 - f[f'rmse_{h}'] / better:+.0%}; "
                    f"80% interval coverage {f[f'coverage_{h}']:.2f}"
                ),
            )
        )


def measure(quick: bool) -> Section:
    t0 = time.perf_counter()
    days = 120 if quick else 360
    devices = _fleet()
    faults = SensorFaults(DEFAULT_SENSOR_RATES, seed=SEED)
    model = CityModel(devices, seed=SEED, sensor_faults=faults)
    months = month_ranges(days)
    held = [months[m] for m in DETECTION_MONTHS if m < len(months)]
    flags: list[Flag] = []
    for a, b in held:
        # the checks run with a week of history before the month (as the API's monitor has);
        # only flags reaching into the month are scored
        f, _ = run_detection(model, faults, a - LEAD_MS, b)
        flags.extend(x for x in f if x.end > a)
        log.info("detection %s: %d flags", datetime.fromtimestamp(a / 1000, UTC).date(), len(f))
    scores = score(model, faults, flags, held)
    t_det = time.perf_counter() - t0
    section = Section("quality", "Data quality and forecast (bench_quality.py)")
    goal = "recall, precision >= 0.9"
    for reason in ("stuck", "spike", "tamper_suspect", "drift"):
        s = scores[reason]
        wanted = goal if reason != "drift" else ""
        for figure, key, note in (
            ("recall", "recall", f"{int(s['episodes'])} injected episodes"),
            ("precision", "precision", f"{int(s['flags'])} flags"),
        ):
            section.add(Result(f"{reason}: {figure}", s[key], "", goal=wanted, note=note))
        section.add(
            Result(
                f"{reason}: false flags per 1,000 clean station-days",
                s["false_per_1000"],
                "",
                goal="<= 1",
                higher_is_better=False,
            )
        )
    t1 = time.perf_counter()
    hours, y, names = district_hourly(model, days)
    train = (90 if quick else TRAIN_DAYS) * 24
    f = score_forecast(hours, y, train, LOCAL_OFFSET_MS)
    forecast_rows(section, "forecast pm25", f, goal_at_6=True)
    section.add(
        Result(
            "forecast 80% interval coverage (1-24 h)",
            f["coverage"],
            "",
            goal="0.75-0.85",
            note=f"{int(f['origins']):,} district forecasts",
        )
    )
    t_fc = time.perf_counter() - t1
    public = public_series()
    public_text = "The public data set could not be fetched in this run: not scored."
    if public is not None:
        ph, py, wheel = public
        train_p = int(ph.size * 2 / 3)
        p = score_forecast(ph, py, train_p, 0)
        forecast_rows(section, "public NO2 (aqeval): forecast", p)
        section.add(
            Result(
                "public NO2 (aqeval): 80% interval coverage", p["coverage"], "", goal="0.75-0.85"
            )
        )
        public_text = (
            f"Public data: `{wheel}` ships `aq_data.csv.gz`, hourly NO2 of one UK roadside site "
            "2001-2003 (the AQEval package's example data). No PM2.5 data set was found inside "
            "a package reachable here: of the air-quality packages in the package index, the "
            "two whose descriptions suggested bundled data were fetched, and `airqoair` ships "
            "none. The same model, unchanged (one series, no neighbours beyond itself), trains "
            "on the first two years and is scored on every hour of the third."
        )
    sd = scores["_"]
    section.body = (
        f"{STATIONS} simulated air stations (seed {SEED}, six districts), 5-minute reports, "
        f"{days} days from {datetime.fromtimestamp(YEAR_START / 1000, UTC).date()} with sensor "
        f"faults at their default rates ({', '.join(f'{k} {v:g}' for k, v in DEFAULT_SENSOR_RATES.items())}). "
        f"Detection scored on the held-out 30-day months {', '.join(str(m + 1) for m in DETECTION_MONTHS if m < len(months))} "
        f"({int(sd['station_days']):,} station-days, {int(sd['clean_days']):,} without any injected fault); "
        "the checks see the week before each month too, as the API's monitor would; "
        "a flag counts as true when it overlaps an injected episode of the matching fault on the "
        "same device and metric (drift: within 7 days after it, as the check needs a week of "
        "gaps). Forecast: district hourly means of every report, trained on the first "
        f"{train // 24} days, scored from every hour after them at 1, 6 and 24 h "
        f"({', '.join(names)}). Detection {t_det:.0f} s, forecast {t_fc:.0f} s.\n\n" + public_text
    )
    return section


def main(argv: list[str] | None = None) -> int:
    return bench_main("bench.bench_quality", measure, argv)


if __name__ == "__main__":
    sys.exit(main())
