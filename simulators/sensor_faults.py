"""Sensor faults of the simulated city, with known truth, so that quality checks can be scored.

``--sensor-faults NAME[=RATE],...`` (``citysense simulate fleet`` and the demo's backfill)
turns them on. Like every value of :class:`~simulators.models.CityModel`, a fault is a pure
function of (seed, device, time): live uplinks, backfill and the benchmark see the same ones.

==============  ===========================================  ====================================
name            what the device reports                      RATE (default)
==============  ===========================================  ====================================
stuck           one air metric frozen at the value it had    chance per device per 10-day window
                when the fault began, for 6-36 h             (0.02)
spike           one report of pm25, pm10, no2 or co jumps    chance per report (0.0005)
                by 1.4-4.4 times the catalog's spike step
drift           pm25 or no2 off by an offset growing         chance per device per 10-day window
                1.5-3.5 times the catalog's drift per day,   (0.02)
                for 6-10 days, then recalibrated
covered_inlet   pm25 and pm10 read clean air (6 + 8 % of     chance per station per haze episode
                the real value) from a fifth into a haze     that brings it >= 80 µg/m³ (0.1)
                episode to its end: the tampered station
reversal        a meter total (water, energy, gas) running   chance per meter per 10-day window
                backwards for 6-36 h, then corrected         (0.02)
==============  ===========================================  ====================================

:meth:`SensorFaults.episodes` lists the truth of a time range (spikes: :meth:`spike_mask`);
explicit episodes (``explicit=``) add faults at chosen devices and times, for tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from citysense.catalog import QUALITY
from simulators.faults import parse_rates
from simulators.models import (
    _KIND_MODELS,
    DAY_MS,
    HOUR_MS,
    BoolArray,
    CityModel,
    Column,
    FloatArray,
    IntArray,
    UIntArray,
    _hash,
    _uniform,
)

DEFAULT_SENSOR_RATES: dict[str, float] = {
    "stuck": 0.02,
    "spike": 0.0005,
    "drift": 0.02,
    "covered_inlet": 0.1,
    "reversal": 0.02,
}
#: the quality-check reason each fault should raise
EXPECTED_REASON: dict[str, str] = {
    "stuck": "stuck",
    "spike": "spike",
    "drift": "drift",
    "covered_inlet": "tamper_suspect",
    "reversal": "out_of_pattern",
}
WINDOW_MS = 10 * DAY_MS
STUCK_METRICS: tuple[str, ...] = ("pm25", "pm10", "no2", "o3", "co", "temperature", "humidity")
SPIKE_METRICS: tuple[str, ...] = ("pm25", "pm10", "no2", "co")
DRIFT_METRICS: tuple[str, ...] = ("pm25", "no2")
METER_TOTALS: dict[str, str] = {
    "water_meter": "water_volume",
    "electricity_meter": "energy",
    "gas_meter": "gas_volume",
}
COVERED_MIN_PM25 = 80.0  #: haze at the station that makes covering it worth the trouble
_STREAM = {"stuck": 0x5701, "drift": 0xD817, "reversal": 0x7E7E, "spike": 0x5B1E}


@dataclass(frozen=True, slots=True)
class FaultEpisode:
    """One injected fault: ``device`` reports ``metric`` wrongly over ``[start_ms, end_ms)``."""

    device: str
    fault: str
    metric: str
    start_ms: int
    end_ms: int


def parse_sensor_faults(items: Iterable[str]) -> dict[str, float]:
    """``["stuck=0.05", "spike"]`` -> rates; ConfigError naming the bad item."""
    return parse_rates(items, DEFAULT_SENSOR_RATES, "--sensor-faults")


@dataclass(frozen=True, slots=True)
class _Windowed:
    active: BoolArray
    start: IntArray
    end: IntArray
    pick: FloatArray  #: uniform draw choosing the metric / size


@dataclass(frozen=True, slots=True)
class _Reports:
    """The reports :meth:`SensorFaults.apply` changes: devices of ``kind`` (``idx``, ``salt``)
    at times ``t``, all of one shape."""

    model: CityModel
    kind: str
    idx: IntArray
    salt: UIntArray
    t: IntArray

    def hold(
        self,
        mask: BoolArray,
        start: IntArray,
        metric: str,
        values: dict[str, Column],
        how: Callable[[FloatArray, FloatArray], FloatArray],
    ) -> None:
        """Where ``mask`` holds, ``metric`` becomes ``how(value at start, value now)``."""
        cells = np.nonzero(mask)
        i = self.idx[cells]
        held = _KIND_MODELS[self.kind](self.model, i, self.salt[cells], start[cells], i.shape)
        v = np.array(values[metric], dtype=np.float64)
        v[cells] = how(np.asarray(held[metric], dtype=np.float64), v[cells])
        values[metric] = v


class SensorFaults:
    """The sensor faults of one simulated city (rates per fault, seed, explicit episodes)."""

    def __init__(
        self,
        rates: Mapping[str, float],
        seed: int = 1,
        explicit: Sequence[FaultEpisode] = (),
    ) -> None:
        self.rates = dict(rates)
        self.seed = seed
        self.explicit = tuple(explicit)
        self._seed_salt = np.uint64((seed * 0x9E3779B1 + 0x51F7) & 0xFFFFFFFFFFFFFFFF)

    @classmethod
    def from_settings(cls, items: Iterable[str], seed: int) -> SensorFaults | None:
        rates = parse_sensor_faults(items)
        return cls(rates, seed) if rates else None

    # ------------------------------------------------------------------ draws

    def _windowed(
        self, fault: str, salt: UIntArray, t: IntArray, min_h: float, max_h: float
    ) -> _Windowed:
        rate = self.rates.get(fault, 0.0)
        w = t // WINDOW_MS
        h = _hash(salt ^ self._seed_salt, _STREAM[fault], w)
        u0 = _uniform(h)
        u1 = _uniform(_hash(h, 1, np.zeros(1, dtype=np.int64)))
        u2 = _uniform(_hash(h, 2, np.zeros(1, dtype=np.int64)))
        u3 = _uniform(_hash(h, 3, np.zeros(1, dtype=np.int64)))
        dur = ((min_h + (max_h - min_h) * u1) * HOUR_MS).astype(np.int64)
        start = w * WINDOW_MS + (u2 * (WINDOW_MS - dur)).astype(np.int64)
        end = start + dur
        active = (u0 < rate) & (t >= start) & (t < end)
        return _Windowed(active, start, end, u3)

    def spike_mask(self, salt: UIntArray, t: IntArray) -> BoolArray:
        """Which reports (device salt x time) carry a spike."""
        rate = self.rates.get("spike", 0.0)
        if rate <= 0:
            return np.zeros(np.broadcast_shapes(salt.shape, t.shape), dtype=np.bool_)
        return np.asarray(_uniform(_hash(salt ^ self._seed_salt, _STREAM["spike"], t)) < rate)

    def _spike_pick(self, salt: UIntArray, t: IntArray) -> FloatArray:
        return _uniform(_hash(salt ^ self._seed_salt, _STREAM["spike"] + 1, t))

    def _covered(self, model: CityModel, idx: IntArray, t: IntArray) -> BoolArray:
        rate = self.rates.get("covered_inlet", 0.0)
        out = np.zeros(t.shape, dtype=np.bool_)
        if rate <= 0 or t.size == 0:
            return out
        s = model._static
        lat, lon = s.lat[idx], s.lon[idx]
        salt = np.broadcast_to(s.salt[idx], t.shape)
        for e in model.episodes(int(t.min()), int(t.max()) + 1):
            hazy = e.peak_pm25 * e.weight(lat, lon) >= COVERED_MIN_PM25
            start = e.start_ms + (e.end_ms - e.start_ms) // 5
            key = np.array([e.start_ms], dtype=np.int64)
            chosen = _uniform(_hash(salt ^ self._seed_salt, 0xC0FE, key)) < rate
            out |= np.broadcast_to(hazy, t.shape) & chosen & (t >= start) & (t < e.end_ms)
        return out

    # ------------------------------------------------------------------ applying

    def apply(
        self,
        model: CityModel,
        kind: str,
        idx: IntArray,
        salt: UIntArray,
        t: IntArray,
        values: dict[str, Column],
    ) -> dict[str, Column]:
        """``values`` of ``kind`` at ``t`` with the faults active there (before rounding)."""
        shape = t.shape
        idx_b = np.broadcast_to(idx, shape)
        reports = _Reports(model, kind, idx_b, salt, t)
        if kind == "air_station":
            self._stuck(reports, values)
            self._drift(salt, t, values)
            covered = self._covered(model, idx_b, t)
            covered |= self._explicit_mask(model, "covered_inlet", "pm25", idx_b, t)
            if covered.any():
                for m, base in (("pm25", 6.0), ("pm10", 10.0)):
                    v = np.asarray(values[m], dtype=np.float64)
                    values[m] = np.where(covered, base + 0.08 * v, v)
            self._spike(salt, t, values)
        elif kind in METER_TOTALS:
            self._reversal(reports, values)
        return values

    def _explicit_mask(
        self, model: CityModel, fault: str, metric: str, idx: IntArray, t: IntArray
    ) -> BoolArray:
        out = np.zeros(t.shape, dtype=np.bool_)
        for e in self.explicit:
            if e.fault != fault or e.metric != metric:
                continue
            ids = [i for i, d in enumerate(model.devices) if d.device == e.device]
            if ids:
                out |= (idx == ids[0]) & (t >= e.start_ms) & (t < e.end_ms)
        return out

    def _stuck(self, r: _Reports, values: dict[str, Column]) -> None:
        win = self._windowed("stuck", r.salt, r.t, 6.0, 36.0)
        which = np.minimum((win.pick * len(STUCK_METRICS)).astype(np.int64), len(STUCK_METRICS) - 1)
        for k, metric in enumerate(STUCK_METRICS):
            mask = win.active & (which == k)
            start = win.start
            for e in self.explicit:
                if e.fault == "stuck" and e.metric == metric:
                    ex = self._explicit_mask(r.model, "stuck", metric, r.idx, r.t)
                    mask = mask | ex
                    start = np.where(ex, e.start_ms, start)
            if mask.any():
                r.hold(mask, start, metric, values, lambda held, now: held)

    def _drift(self, salt: UIntArray, t: IntArray, values: dict[str, Column]) -> None:
        win = self._windowed("drift", salt, t, 6 * 24.0, 10 * 24.0)
        if not win.active.any():
            return
        which = np.minimum((win.pick * len(DRIFT_METRICS)).astype(np.int64), len(DRIFT_METRICS) - 1)
        days = (t - win.start).astype(np.float64) / DAY_MS
        sign = np.where(
            _uniform(_hash(salt ^ self._seed_salt, 0xD18, t // WINDOW_MS)) < 0.5, -1.0, 1.0
        )
        for k, metric in enumerate(DRIFT_METRICS):
            per_day = QUALITY[metric].drift_per_day or 1.0
            rate = (1.5 + 2.0 * ((win.pick * len(DRIFT_METRICS)) % 1.0)) * per_day
            mask = win.active & (which == k)
            v = np.asarray(values[metric], dtype=np.float64)
            values[metric] = np.where(mask, np.maximum(v + sign * rate * days, 0.2 * v), v)

    def _spike(self, salt: UIntArray, t: IntArray, values: dict[str, Column]) -> None:
        mask = self.spike_mask(salt, t)
        if not mask.any():
            return
        pick = self._spike_pick(salt, t)
        which = np.minimum((pick * len(SPIKE_METRICS)).astype(np.int64), len(SPIKE_METRICS) - 1)
        size = 1.4 + 3.0 * ((pick * 97.0) % 1.0)
        for k, metric in enumerate(SPIKE_METRICS):
            step = QUALITY[metric].spike_step or 0.0
            m = mask & (which == k)
            v = np.asarray(values[metric], dtype=np.float64)
            values[metric] = np.where(m, v + size * step, v)

    def _reversal(self, r: _Reports, values: dict[str, Column]) -> None:
        win = self._windowed("reversal", r.salt, r.t, 6.0, 36.0)
        if win.active.any():
            r.hold(
                win.active,
                win.start,
                METER_TOTALS[r.kind],
                values,
                lambda held, now: np.maximum(held * 2.0 - now, 0.0),
            )

    # ------------------------------------------------------------------ truth

    def episodes(self, model: CityModel, start_ms: int, end_ms: int) -> list[FaultEpisode]:
        """Every windowed and covered-inlet episode overlapping [start, end), and the explicit
        ones (spikes are per report: :meth:`spike_mask`)."""
        out = [e for e in self.explicit if e.end_ms > start_ms and e.start_ms < end_ms]
        windows = np.arange(start_ms // WINDOW_MS, (end_ms - 1) // WINDOW_MS + 1, dtype=np.int64)
        probe = windows * WINDOW_MS  # any time inside the window gives its draw
        for kind, kidx in model.kind_index.items():
            if not kidx.size:
                continue
            salt = model._static.salt[kidx]
            specs: list[tuple[str, float, float]] = []
            if kind == "air_station":
                specs = [("stuck", 6.0, 36.0), ("drift", 144.0, 240.0)]
            elif kind in METER_TOTALS:
                specs = [("reversal", 6.0, 36.0)]
            for fault, lo, hi in specs:
                if self.rates.get(fault, 0.0) <= 0:
                    continue
                tt = np.broadcast_to(probe[:, None], (probe.size, kidx.size))
                ss = np.broadcast_to(salt[None, :], tt.shape)
                win = self._windowed(fault, ss, tt, lo, hi)
                # active at its own start: that is whether the window has an episode
                chosen = self._windowed(fault, ss, win.start, lo, hi).active
                for r, c in zip(*np.nonzero(chosen), strict=True):
                    a, b = int(win.start[r, c]), int(win.end[r, c])
                    if b <= start_ms or a >= end_ms:
                        continue
                    pick = float(win.pick[r, c])
                    if fault == "stuck":
                        metric = STUCK_METRICS[min(int(pick * len(STUCK_METRICS)), 6)]
                    elif fault == "drift":
                        metric = DRIFT_METRICS[min(int(pick * len(DRIFT_METRICS)), 1)]
                    else:
                        metric = METER_TOTALS[kind]
                    device = model.devices[int(kidx[c])].device
                    out.append(FaultEpisode(device, fault, metric, a, b))
            if kind == "air_station" and self.rates.get("covered_inlet", 0.0) > 0:
                s = model._static
                for e in model.episodes(start_ms, end_ms):
                    hazy = e.peak_pm25 * e.weight(s.lat[kidx], s.lon[kidx]) >= COVERED_MIN_PM25
                    key = np.array([e.start_ms], dtype=np.int64)
                    chosen_c = (
                        _uniform(_hash(salt ^ self._seed_salt, 0xC0FE, key))
                        < self.rates["covered_inlet"]
                    )
                    begin = e.start_ms + (e.end_ms - e.start_ms) // 5
                    if begin >= end_ms or e.end_ms <= start_ms:
                        continue
                    for c in np.nonzero(hazy & chosen_c)[0].tolist():
                        device = model.devices[int(kidx[c])].device
                        out.append(FaultEpisode(device, "covered_inlet", "pm25", begin, e.end_ms))
        out.sort(key=lambda e: (e.start_ms, e.device, e.fault))
        return out


__all__ = [
    "DEFAULT_SENSOR_RATES",
    "EXPECTED_REASON",
    "FaultEpisode",
    "SensorFaults",
    "parse_sensor_faults",
]
