"""Air quality index: China's HJ 633-2012, its 2026 revision, and the US EPA AQI.

Pure functions over concentrations: no clock, no storage. The caller gives hourly means per
pollutant (newest first); :func:`window_means` turns them into the averages each standard
asks for and :func:`compute_aqi` returns the AQI with the evidence behind it.

HJ 633 (real-time, hourly report), as implemented here:

* IAQI = (IAQI_hi - IAQI_lo) / (BP_hi - BP_lo) * (C - BP_lo) + IAQI_lo, **rounded up** to an
  integer, as the public implementations checked do; AQI = max IAQI;
* SO2, NO2, CO and O3 use their 1-hour tables; O3 also its 8-hour moving average;
* PM2.5 and PM10 have no 1-hour table: their 1-hour mean is looked up in the 24-hour table
  (what the national real-time release does);
* SO2 1-hour above 800 µg/m³ is not used: the SO2 24-hour IAQI stands in for it; O3 8-hour
  above 800 µg/m³ is not used (the O3 1-hour IAQI counts);
* above a table's top breakpoint the IAQI is 500 (beyond the scale);
* the primary pollutant(s) are named when AQI > 50: every pollutant whose IAQI equals it.

The 2026 revision changes only the PM2.5 and PM10 24-hour breakpoints. The US EPA AQI (2024
PM2.5 table) uses 24-hour PM, 8-hour O3 and CO, 1-hour SO2 and NO2; gases are converted from
µg/m³ at 25 °C (1 ppb = 1.88 NO2, 1.96 O3, 2.62 SO2 µg/m³; 1 ppm CO = 1.145 mg/m³),
concentrations are truncated to the table's precision and the AQI rounded to nearest.

Moving averages need enough hours: 8-hour at least 6 hourly values, 24-hour at least 20.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, get_args

from citysense.catalog import METRICS

Standard = Literal["hj633-2012", "hj633-2026", "us-epa"]
STANDARDS: tuple[str, ...] = get_args(Standard)
DEFAULT_STANDARD: Standard = "hj633-2012"
POLLUTANTS: tuple[str, ...] = ("pm25", "pm10", "so2", "no2", "o3", "co")
#: The unit of each pollutant's concentration: the catalog's.
UNITS: Mapping[str, str] = {name: METRICS[name].unit for name in POLLUTANTS}

_IAQI = (0, 50, 100, 150, 200, 300, 400, 500)

#: HJ 633-2012 breakpoints, (pollutant, averaging) -> concentrations at _IAQI levels.
HJ633_2012: Mapping[tuple[str, str], tuple[float, ...]] = {
    ("so2", "24h"): (0, 50, 150, 475, 800, 1600, 2100, 2620),
    ("so2", "1h"): (0, 150, 500, 650, 800),
    ("no2", "24h"): (0, 40, 80, 180, 280, 565, 750, 940),
    ("no2", "1h"): (0, 100, 200, 700, 1200, 2340, 3090, 3840),
    ("pm10", "24h"): (0, 50, 150, 250, 350, 420, 500, 600),
    ("co", "24h"): (0, 2, 4, 14, 24, 36, 48, 60),
    ("co", "1h"): (0, 5, 10, 35, 60, 90, 120, 150),
    ("o3", "1h"): (0, 160, 200, 300, 400, 800, 1000, 1200),
    ("o3", "8h"): (0, 100, 160, 215, 265, 800),
    ("pm25", "24h"): (0, 35, 75, 115, 150, 250, 350, 500),
}
HJ633_2026: Mapping[tuple[str, str], tuple[float, ...]] = {
    **HJ633_2012,
    ("pm25", "24h"): (0, 35, 60, 115, 150, 250, 350, 500),
    ("pm10", "24h"): (0, 50, 120, 250, 350, 420, 500, 600),
}

#: HJ 633 levels: (top AQI, level, English, Chinese, colour).
HJ_LEVELS: tuple[tuple[int, str, str, str, str], ...] = (
    (50, "I", "excellent", "优", "#00e400"),
    (100, "II", "good", "良", "#ffff00"),
    (150, "III", "lightly polluted", "轻度污染", "#ff7e00"),
    (200, "IV", "moderately polluted", "中度污染", "#ff0000"),
    (300, "V", "heavily polluted", "重度污染", "#99004c"),
    (10**9, "VI", "severely polluted", "严重污染", "#7e0023"),
)

# US EPA: (pollutant, averaging) -> ((c_lo, c_hi, i_lo, i_hi), ...), unit, decimals kept.
_EpaTable = tuple[tuple[float, float, int, int], ...]
US_EPA: Mapping[tuple[str, str], tuple[_EpaTable, str, int]] = {
    ("pm25", "24h"): (
        (
            (0.0, 9.0, 0, 50),
            (9.1, 35.4, 51, 100),
            (35.5, 55.4, 101, 150),
            (55.5, 125.4, 151, 200),
            (125.5, 225.4, 201, 300),
            (225.5, 325.4, 301, 500),
        ),
        "µg/m³",
        1,
    ),
    ("pm10", "24h"): (
        (
            (0, 54, 0, 50),
            (55, 154, 51, 100),
            (155, 254, 101, 150),
            (255, 354, 151, 200),
            (355, 424, 201, 300),
            (425, 604, 301, 500),
        ),
        "µg/m³",
        0,
    ),
    ("o3", "8h"): (
        (
            (0.000, 0.054, 0, 50),
            (0.055, 0.070, 51, 100),
            (0.071, 0.085, 101, 150),
            (0.086, 0.105, 151, 200),
            (0.106, 0.200, 201, 300),
        ),
        "ppm",
        3,
    ),
    ("o3", "1h"): (
        (
            (0.125, 0.164, 101, 150),
            (0.165, 0.204, 151, 200),
            (0.205, 0.404, 201, 300),
            (0.405, 0.604, 301, 500),
        ),
        "ppm",
        3,
    ),
    ("co", "8h"): (
        (
            (0.0, 4.4, 0, 50),
            (4.5, 9.4, 51, 100),
            (9.5, 12.4, 101, 150),
            (12.5, 15.4, 151, 200),
            (15.5, 30.4, 201, 300),
            (30.5, 50.4, 301, 500),
        ),
        "ppm",
        1,
    ),
    ("so2", "1h"): (
        ((0, 35, 0, 50), (36, 75, 51, 100), (76, 185, 101, 150), (186, 304, 151, 200)),
        "ppb",
        0,
    ),
    ("so2", "24h"): (((305, 604, 201, 300), (605, 1004, 301, 500)), "ppb", 0),
    ("no2", "1h"): (
        (
            (0, 53, 0, 50),
            (54, 100, 51, 100),
            (101, 360, 101, 150),
            (361, 649, 151, 200),
            (650, 1249, 201, 300),
            (1250, 2049, 301, 500),
        ),
        "ppb",
        0,
    ),
}
#: µg/m³ per ppb (CO: mg/m³ per ppm) at 25 °C.
PPB_FACTOR: Mapping[str, float] = {"no2": 1.88, "o3": 1.96, "so2": 2.62, "co": 1.145}

EPA_LEVELS: tuple[tuple[int, str, str, str, str], ...] = (
    (50, "1", "good", "", "#00e400"),
    (100, "2", "moderate", "", "#ffff00"),
    (150, "3", "unhealthy for sensitive groups", "", "#ff7e00"),
    (200, "4", "unhealthy", "", "#ff0000"),
    (300, "5", "very unhealthy", "", "#8f3f97"),
    (10**9, "6", "hazardous", "", "#7e0023"),
)


@dataclass(frozen=True, slots=True)
class Iaqi:
    """One pollutant's sub-index with its evidence: the band of the table it fell in."""

    pollutant: str
    averaging: str  #: "1h", "8h" or "24h"
    concentration: float  #: as measured (µg/m³, CO mg/m³)
    unit: str  #: unit of ``table_concentration``
    table_concentration: float  #: the value looked up (converted/truncated for US EPA)
    iaqi: int | None  #: ``None``: this value is not used (``note`` says why)
    c_lo: float | None = None
    c_hi: float | None = None
    i_lo: int | None = None
    i_hi: int | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class AqiResult:
    standard: str
    aqi: int | None  #: ``None``: no pollutant measured
    level: str | None
    category: str | None
    category_zh: str | None
    colour: str | None
    primary_pollutants: tuple[str, ...]
    iaqi: tuple[Iaqi, ...]


def window_means(hourly: Sequence[float | None]) -> dict[str, float]:
    """``{"1h", "8h", "24h"}`` means from hourly means, newest first (missing: ``None``).

    The 1-hour value is the newest hour; 8-hour and 24-hour moving averages need at least 6
    and 20 hourly values in their window, else they are absent.
    """
    out: dict[str, float] = {}
    if hourly and hourly[0] is not None:
        out["1h"] = float(hourly[0])
    for key, n, need in (("8h", 8, 6), ("24h", 24, 20)):
        values = [v for v in hourly[:n] if v is not None]
        if len(values) >= need:
            out[key] = sum(values) / len(values)
    return out


def _ceil(x: float) -> int:
    return math.ceil(round(x, 6))


def hj_iaqi(
    pollutant: str, averaging: str, c: float, table: Mapping[tuple[str, str], tuple[float, ...]]
) -> Iaqi:
    """The HJ 633 sub-index of concentration ``c`` in table (pollutant, averaging)."""
    bps = table[(pollutant, averaging)]
    unit = UNITS[pollutant]
    if c > bps[-1]:
        return Iaqi(
            pollutant, averaging, c, unit, c, 500, bps[-1], None, 500, 500, "above the scale"
        )
    for k in range(1, len(bps)):
        lo, hi = bps[k - 1], bps[k]
        if c <= hi:
            i_lo, i_hi = _IAQI[k - 1], _IAQI[k]
            value = (i_hi - i_lo) / (hi - lo) * (c - lo) + i_lo
            return Iaqi(pollutant, averaging, c, unit, c, _ceil(value), lo, hi, i_lo, i_hi)
    raise AssertionError("unreachable")  # pragma: no cover


def _level(aqi: int, levels: tuple[tuple[int, str, str, str, str], ...]) -> tuple[str, ...]:
    for top, level, en, zh, colour in levels:
        if aqi <= top:
            return level, en, zh, colour
    raise AssertionError("unreachable")  # pragma: no cover


def _hj(conc: Mapping[str, Mapping[str, float]], standard: str) -> list[Iaqi]:
    table = HJ633_2026 if standard == "hj633-2026" else HJ633_2012
    out: list[Iaqi] = []
    c = conc.get
    for pm in ("pm25", "pm10"):
        if "1h" in c(pm, {}):
            out.append(hj_iaqi(pm, "24h", conc[pm]["1h"], table))
            out[-1] = _with(out[-1], averaging="1h", note="1-hour mean on the 24-hour table")
    for gas in ("no2", "co"):
        if "1h" in c(gas, {}):
            out.append(hj_iaqi(gas, "1h", conc[gas]["1h"], table))
    so2 = c("so2", {})
    if "1h" in so2:
        if so2["1h"] <= 800:
            out.append(hj_iaqi("so2", "1h", so2["1h"], table))
        else:
            out.append(
                Iaqi("so2", "1h", so2["1h"], "µg/m³", so2["1h"], None, note="above 800: not used")
            )
            if "24h" in so2:
                sub = hj_iaqi("so2", "24h", so2["24h"], table)
                out.append(_with(sub, note="stands in for the 1-hour value above 800"))
    o3 = c("o3", {})
    if "1h" in o3:
        out.append(hj_iaqi("o3", "1h", o3["1h"], table))
    if "8h" in o3:
        if o3["8h"] <= 800:
            out.append(hj_iaqi("o3", "8h", o3["8h"], table))
        else:
            out.append(
                Iaqi(
                    "o3",
                    "8h",
                    o3["8h"],
                    "µg/m³",
                    o3["8h"],
                    None,
                    note="above 800: not used, the 1-hour IAQI counts",
                )
            )
    return out


def _with(i: Iaqi, **changes: object) -> Iaqi:
    return replace(i, **changes)  # type: ignore[arg-type]


def epa_iaqi(pollutant: str, averaging: str, c: float) -> Iaqi:
    """The US EPA sub-index of ``c`` (µg/m³, CO mg/m³), converted and truncated."""
    bands, unit, decimals = US_EPA[(pollutant, averaging)]
    x = c
    if pollutant in PPB_FACTOR:
        x = c / PPB_FACTOR[pollutant]
        if unit == "ppm" and pollutant == "o3":
            x /= 1000.0
    scale = 10**decimals
    x = math.floor(round(x * scale, 6)) / scale
    if x > bands[-1][1]:
        lo, hi, i_lo, i_hi = bands[-1]
        return Iaqi(pollutant, averaging, c, unit, x, 500, lo, hi, i_lo, i_hi, "above the scale")
    for lo, hi, i_lo, i_hi in bands:
        if x <= hi:
            if x < lo:
                return Iaqi(pollutant, averaging, c, unit, x, None, note="below this table")
            value = (i_hi - i_lo) / (hi - lo) * (x - lo) + i_lo
            return Iaqi(
                pollutant, averaging, c, unit, x, math.floor(value + 0.5), lo, hi, i_lo, i_hi
            )
    raise AssertionError("unreachable")  # pragma: no cover


def _epa(conc: Mapping[str, Mapping[str, float]]) -> list[Iaqi]:
    out: list[Iaqi] = []
    c = conc.get
    for pm in ("pm25", "pm10"):
        if "24h" in c(pm, {}):
            out.append(epa_iaqi(pm, "24h", conc[pm]["24h"]))
    if "8h" in c("co", {}):
        out.append(epa_iaqi("co", "8h", conc["co"]["8h"]))
    if "1h" in c("no2", {}):
        out.append(epa_iaqi("no2", "1h", conc["no2"]["1h"]))
    so2 = c("so2", {})
    if "1h" in so2:
        ppb = so2["1h"] / PPB_FACTOR["so2"]
        if ppb < 305:
            out.append(epa_iaqi("so2", "1h", so2["1h"]))
        elif "24h" in so2 and so2["24h"] / PPB_FACTOR["so2"] >= 305:
            out.append(epa_iaqi("so2", "24h", so2["24h"]))
        else:
            sub = epa_iaqi("so2", "24h", so2["1h"])
            out.append(_with(sub, averaging="1h", note="1-hour value on the 24-hour bands"))
    o3 = c("o3", {})
    if "8h" in o3:
        if o3["8h"] / PPB_FACTOR["o3"] / 1000 <= 0.200:
            out.append(epa_iaqi("o3", "8h", o3["8h"]))
        else:
            out.append(
                Iaqi(
                    "o3",
                    "8h",
                    o3["8h"],
                    "ppm",
                    o3["8h"] / PPB_FACTOR["o3"] / 1000,
                    None,
                    note="above 0.200 ppm: not used, the 1-hour value counts",
                )
            )
    if "1h" in o3 and o3["1h"] / PPB_FACTOR["o3"] / 1000 >= 0.125:
        out.append(epa_iaqi("o3", "1h", o3["1h"]))
    return out


def compute_aqi(concentrations: Mapping[str, Mapping[str, float]], standard: Standard) -> AqiResult:
    """AQI of one place: ``concentrations[pollutant][averaging]`` (see :func:`window_means`)."""
    if standard not in STANDARDS:
        raise ValueError(f"unknown AQI standard {standard!r}")
    subs = _epa(concentrations) if standard == "us-epa" else _hj(concentrations, standard)
    used = [s for s in subs if s.iaqi is not None]
    if not used:
        return AqiResult(standard, None, None, None, None, None, (), tuple(subs))
    aqi = max(s.iaqi for s in used if s.iaqi is not None)
    levels = EPA_LEVELS if standard == "us-epa" else HJ_LEVELS
    level, en, zh, colour = _level(aqi, levels)
    primary: tuple[str, ...] = ()
    if aqi > 50:
        primary = tuple(dict.fromkeys(s.pollutant for s in used if s.iaqi == aqi))
    return AqiResult(standard, aqi, level, en, zh or None, colour, primary, tuple(subs))
