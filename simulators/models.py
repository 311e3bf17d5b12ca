"""Vectorised sensor models of the simulated city (numpy).

:class:`CityModel` answers "what does device *d* measure at time *t*" for whole arrays of
devices and times at once. Every value is a pure function of ``(seed, device id, t)``:
randomness comes from a counter-based hash (splitmix64) of those keys, never from a random
generator's call order, so live mode, backfill, any chunking and any subset of devices all
see the same series for the same seed.

What the models carry:

* air quality: diurnal cycles, a seasonal cycle, city- and district-wide slow variation
  (neighbouring stations move together), haze episodes that raise PM2.5 over a region with a
  spatial fall-off, NO2 following traffic, O3 peaking in the afternoon;
* traffic: weekday rush hours, quieter weekends, incidents that lower speed and raise
  occupancy; parking occupancy by time of day and site type;
* water, electricity and gas meters: cumulative totals that are the exact integral of their
  flow (so they never go backwards), night flows near zero, recurring injected water leaks;
* device health: RSRP by site with ECL following it, SNR, battery drained per uplink (more at
  higher coverage levels), uplink counters.

Invariants: values are within the catalog's ranges (``citysense.catalog``), integer metrics
are whole, cumulative metrics never decrease in time for a device.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from citysense.catalog import HEALTH_METRICS, KINDS, METRICS
from citysense.registry import Device
from simulators.city import KM_PER_DEG_LAT, ZHENGZHOU, District, site_named

if TYPE_CHECKING:
    from simulators.sensor_faults import SensorFaults

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
UIntArray = npt.NDArray[np.uint64]
BoolArray = npt.NDArray[np.bool_]
Column = FloatArray | BoolArray

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
#: The simulated city's time zone (China Standard Time, no daylight saving) and its offset.
CITY_TIMEZONE = "Asia/Shanghai"
LOCAL_OFFSET_MS = 8 * HOUR_MS
_W = 2 * math.pi / 24.0  # radians per hour of a daily cycle
_YEAR_H = 365.2425 * 24.0

#: decimals a device reports each float metric with (its resolution)
DECIMALS: dict[str, int] = {
    "pm25": 1,
    "pm10": 1,
    "no2": 1,
    "so2": 1,
    "o3": 1,
    "co": 2,
    "temperature": 1,
    "humidity": 1,
    "noise": 1,
    "vehicle_count": 0,
    "avg_speed": 1,
    "occupancy": 1,
    "water_volume": 3,
    "water_flow": 3,
    "water_pressure": 0,
    "energy": 2,
    "power": 0,
    "voltage": 1,
    "gas_volume": 3,
    "battery": 1,
    "battery_voltage": 3,
    "rsrp": 0,
    "snr": 1,
    "ecl": 0,
    "uplinks": 0,
}

#: kinds on mains power (their battery is a backup that stays full)
MAINS_KINDS = frozenset({"air_station", "traffic_counter", "electricity_meter"})


# --------------------------------------------------------------------------- hashing

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_MASK16 = np.uint64(0xFFFF)


def _mix(x: UIntArray) -> UIntArray:
    """splitmix64's finaliser, element-wise (wrapping uint64 arithmetic)."""
    x = x ^ (x >> _S30)
    x = x * _M1
    x = x ^ (x >> _S27)
    x = x * _M2
    return x ^ (x >> _S31)


def _hash(salt: UIntArray, stream: int, slot: IntArray) -> UIntArray:
    """A well-mixed 64-bit hash of (device salt, stream, time slot)."""
    s = np.uint64(stream & 0xFFFFFFFFFFFFFFFF)
    return _mix((salt ^ s) + slot.astype(np.uint64) * _GOLD)


def _uniform(h: UIntArray) -> FloatArray:
    """[0, 1) from a hash."""
    return (h >> _S11).astype(np.float64) * (1.0 / 9007199254740992.0)


def _normal(h: UIntArray) -> FloatArray:
    """Approximately standard normal (sum of four 16-bit uniforms, bounded at ±3.46)."""
    s = (
        (h & _MASK16)
        + ((h >> np.uint64(16)) & _MASK16)
        + ((h >> np.uint64(32)) & _MASK16)
        + (h >> np.uint64(48))
    )
    return (s.astype(np.float64) * (1.0 / 65535.0) - 2.0) * 1.7320508075688772


def _smooth(salt: UIntArray, stream: int, t: IntArray, knot_ms: int) -> FloatArray:
    """Smooth-in-time standard noise: normals at knots, eased between them."""
    k = t // knot_ms
    f = (t - k * knot_ms).astype(np.float64) * (1.0 / knot_ms)
    f = f * f * (3.0 - 2.0 * f)
    n0 = _normal(_hash(salt, stream, k))
    n1 = _normal(_hash(salt, stream, k + 1))
    return n0 + (n1 - n0) * f


def salt_of(name: str) -> int:
    """A stable 64-bit salt of a name (device id, district)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def _bump(h: FloatArray, centre: float, width: float) -> FloatArray:
    """A Gaussian bump in the hour of day (no wrap: centres sit well inside the day)."""
    z = (h - centre) * (1.0 / width)
    return np.exp(-0.5 * z * z)


# --------------------------------------------------------------------------- time of day


def local_hour(t: IntArray) -> FloatArray:
    """Hour of the local day, 0 <= h < 24."""
    return ((t + LOCAL_OFFSET_MS) % DAY_MS).astype(np.float64) * (1.0 / HOUR_MS)


def weekday(t: IntArray) -> IntArray:
    """Local day of the week, Monday = 0 (1970-01-01 was a Thursday)."""
    return ((t + LOCAL_OFFSET_MS) // DAY_MS + 3) % 7


def season(t: IntArray) -> FloatArray:
    """+1 in mid-January (winter) ... -1 in mid-July."""
    hours = t.astype(np.float64) * (1.0 / HOUR_MS)
    return np.cos(2 * math.pi * (hours - 14 * 24.0) / _YEAR_H)


def traffic_demand(t: IntArray) -> FloatArray:
    """Road demand 0..1: weekday rush hours at 08:00 and 18:00, broad weekend midday."""
    h = local_hour(t)
    weekend = weekday(t) >= 5
    weekday_d = (
        0.07 + 0.30 * _bump(h, 13.0, 3.5) + 0.70 * _bump(h, 8.0, 1.0) + 0.75 * _bump(h, 18.0, 1.3)
    )
    weekend_d = 0.07 + 0.45 * _bump(h, 14.5, 3.5) + 0.10 * _bump(h, 10.0, 1.5)
    return np.minimum(np.where(weekend, weekend_d, weekday_d), 1.0)


@dataclass(frozen=True, slots=True)
class Profile:
    """A daily (and optionally yearly) consumption profile with an exact integral.

    ``rate(h) = 1 + a1 cos(w (h - p1)) + a2 cos(2 w (h - p2)) + ay cos(wy (t - py))``; the
    coefficients keep it positive, so its integral (a cumulative meter) never decreases.
    """

    a1: float
    p1: float
    a2: float
    p2: float
    ay: float = 0.0  #: yearly amplitude, peak in mid-January (heating) when positive

    def rate(self, t: IntArray) -> FloatArray:
        th = (t + LOCAL_OFFSET_MS).astype(np.float64) * (1.0 / HOUR_MS)
        out = (
            1.0 + self.a1 * np.cos(_W * (th - self.p1)) + self.a2 * np.cos(2 * _W * (th - self.p2))
        )
        if self.ay:
            out = out + self.ay * np.cos(2 * math.pi * (th - 14 * 24.0) / _YEAR_H)
        return out

    def integral_h(self, t: IntArray) -> FloatArray:
        """Integral of :meth:`rate` in hours from the epoch (up to a constant) to ``t``."""
        th = (t + LOCAL_OFFSET_MS).astype(np.float64) * (1.0 / HOUR_MS)
        out = (
            th
            + (self.a1 / _W) * np.sin(_W * (th - self.p1))
            + (self.a2 / (2 * _W)) * np.sin(2 * _W * (th - self.p2))
        )
        if self.ay:
            wy = 2 * math.pi / _YEAR_H
            out = out + (self.ay / wy) * np.sin(wy * (th - 14 * 24.0))
        return out


#: households: morning and evening peaks, near zero around 01:30
WATER_PROFILE = Profile(0.5, 13.5, 0.45, 7.5)
ELECTRICITY_PROFILE = Profile(0.35, 19.0, 0.2, 8.0, ay=0.1)
GAS_PROFILE = Profile(0.45, 13.0, 0.35, 7.0, ay=0.45)


# --------------------------------------------------------------------------- episodes


@dataclass(frozen=True, slots=True)
class HazeEpisode:
    """A regional haze episode: PM2.5 raised around a centre, rising and falling in time."""

    start_ms: int
    end_ms: int
    lat: float
    lon: float
    radius_km: float
    peak_pm25: float  #: added at the centre at the height of the episode

    def envelope(self, t: IntArray) -> FloatArray:
        """0 outside the episode, a smooth sin² rise and fall inside it."""
        span = self.end_ms - self.start_ms
        x = (t - self.start_ms).astype(np.float64) * (1.0 / span)
        inside = (x > 0.0) & (x < 1.0)
        return np.where(inside, np.sin(math.pi * np.clip(x, 0.0, 1.0)) ** 2, 0.0)

    def weight(self, lat: FloatArray, lon: FloatArray) -> FloatArray:
        dy = (lat - self.lat) * KM_PER_DEG_LAT
        dx = (lon - self.lon) * KM_PER_DEG_LAT * math.cos(math.radians(self.lat))
        return np.exp(-0.5 * (dx * dx + dy * dy) / (self.radius_km * self.radius_km))


#: Episodes are drawn per window of this length (at most one per window).
EPISODE_WINDOW_MS = 5 * DAY_MS
EPISODE_PROBABILITY = 0.55


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True, slots=True)
class _Static:
    """Per-device constants, arrays aligned with the fleet's device order."""

    salt: UIntArray
    district_salt: UIntArray
    lat: FloatArray
    lon: FloatArray
    pollution: FloatArray
    site_rsrp: FloatArray


class CityModel:
    """Values of every metric of every device of a fleet, at any time (vectorised).

    ``sample(kind, idx, t)`` takes fleet indices ``idx`` (all of that kind) and epoch-ms
    times ``t`` broadcastable against them, and returns one array per metric of the kind
    and the health metrics.
    """

    def __init__(
        self,
        devices: Sequence[Device],
        seed: int = 1,
        *,
        episodes: Iterable[HazeEpisode] = (),
        random_episodes: bool = True,
        districts: Sequence[District] = ZHENGZHOU,
        sensor_faults: SensorFaults | None = None,
    ) -> None:
        self.devices: tuple[Device, ...] = tuple(devices)
        #: injected sensor faults with known truth (``simulators.sensor_faults``), or none
        self.sensor_faults = sensor_faults
        self.seed = seed
        self.extra_episodes: tuple[HazeEpisode, ...] = tuple(episodes)
        self.random_episodes = random_episodes
        self._seed_salt = salt_of(f"citysense-seed-{seed}")
        by_district = {d.name: d for d in districts}
        n = len(self.devices)
        salt = np.empty(n, dtype=np.uint64)
        dsalt = np.empty(n, dtype=np.uint64)
        pollution = np.ones(n)
        site_rsrp = np.full(n, -95.0)
        for i, d in enumerate(self.devices):
            salt[i] = np.uint64(salt_of(d.device) ^ self._seed_salt)
            dsalt[i] = np.uint64(salt_of("district:" + d.district) ^ self._seed_salt)
            district = by_district.get(d.district)
            if district is not None:
                pollution[i] = district.pollution
            site = site_named(d.district, d.site, districts)
            if site is not None:
                site_rsrp[i] = site.rsrp_dbm
        self._static = _Static(
            salt,
            dsalt,
            np.array([d.lat for d in self.devices], dtype=np.float64),
            np.array([d.lon for d in self.devices], dtype=np.float64),
            pollution,
            site_rsrp,
        )
        self.kind_index: dict[str, IntArray] = {
            k: np.array([i for i, d in enumerate(self.devices) if d.kind == k], dtype=np.int64)
            for k in KINDS
        }
        self._city_salt = np.array([self._seed_salt], dtype=np.uint64)

    # ------------------------------------------------------------------ public API

    def metrics(self, kind: str) -> tuple[str, ...]:
        """The metrics :meth:`sample` returns for ``kind``, in payload order."""
        return KINDS[kind].metrics + HEALTH_METRICS

    def sample(self, kind: str, idx: IntArray, t: IntArray) -> dict[str, Column]:
        """Every metric of ``kind`` for devices ``idx`` at times ``t`` (broadcast)."""
        idx = np.asarray(idx, dtype=np.int64)
        t = np.asarray(t, dtype=np.int64)
        if idx.ndim == 0:
            idx = idx.reshape(1)
        if t.ndim == 0:
            t = np.broadcast_to(t, idx.shape)
        shape = np.broadcast_shapes(idx.shape, t.shape)
        t = np.ascontiguousarray(np.broadcast_to(t, shape))
        s = self._static
        salt = np.broadcast_to(s.salt[idx], shape)
        own = _KIND_MODELS[kind](self, idx, salt, t, shape)
        if self.sensor_faults is not None:
            own = self.sensor_faults.apply(self, kind, idx, salt, t, own)
        own.update(self._health(kind, idx, salt, t, shape))
        return _finish(own)

    def at(self, t_ms: int) -> dict[str, dict[str, Column]]:
        """Every device's values at one instant, by kind then metric."""
        return {
            kind: self.sample(kind, idx, np.full(idx.shape, t_ms, dtype=np.int64))
            for kind, idx in self.kind_index.items()
            if idx.size
        }

    def phase_ms(self, idx: IntArray, interval_ms: int) -> IntArray:
        """Each device's reporting phase in [0, interval): it reports at phase + k * interval."""
        salt = self._static.salt[np.asarray(idx, dtype=np.int64)]
        u = _uniform(_hash(salt, 90, np.zeros(1, dtype=np.int64)))
        return (u * interval_ms).astype(np.int64)

    def episodes(self, start_ms: int, end_ms: int) -> list[HazeEpisode]:
        """Haze episodes overlapping [start_ms, end_ms): the seeded ones and the extra ones."""
        found = [e for e in self.extra_episodes if e.end_ms > start_ms and e.start_ms < end_ms]
        if not self.random_episodes:
            return found
        first = start_ms // EPISODE_WINDOW_MS - 1
        last = end_ms // EPISODE_WINDOW_MS
        for w in range(first, last + 1):
            e = self._episode_of_window(w)
            if e is not None and e.end_ms > start_ms and e.start_ms < end_ms:
                found.append(e)
        return found

    def leak_active(self, idx: IntArray, t: IntArray) -> BoolArray:
        """Whether each water meter ``idx`` has a leak running at ``t``."""
        idx = np.asarray(idx, dtype=np.int64)
        t = np.asarray(t, dtype=np.int64)
        shape = np.broadcast_shapes(idx.shape, t.shape)
        salt = np.broadcast_to(self._static.salt[idx], shape)
        rate, active, _, _ = self._leak(salt, np.broadcast_to(t, shape))
        return active & (rate > 0)

    def incident_active(self, idx: IntArray, t: IntArray) -> BoolArray:
        """Whether each traffic counter ``idx`` has an incident at ``t``."""
        idx = np.asarray(idx, dtype=np.int64)
        t = np.asarray(t, dtype=np.int64)
        shape = np.broadcast_shapes(idx.shape, t.shape)
        salt = np.broadcast_to(self._static.salt[idx], shape)
        return self._incident(salt, np.broadcast_to(t, shape))

    # ------------------------------------------------------------------ episodes

    def _episode_of_window(self, w: int) -> HazeEpisode | None:
        key = np.array([self._seed_salt ^ 0xE915], dtype=np.uint64)
        h = _hash(key, 0x4A2E, np.array([w], dtype=np.int64))
        u = [float(_uniform(_hash(h, i, np.zeros(1, dtype=np.int64)))[0]) for i in range(6)]
        if u[0] >= EPISODE_PROBABILITY:
            return None
        duration = int((1.0 + 2.0 * u[1]) * DAY_MS)
        start = w * EPISODE_WINDOW_MS + int(u[2] * (EPISODE_WINDOW_MS - duration))
        lat = 34.72 + 0.16 * u[3]
        lon = 113.56 + 0.20 * u[4]
        return HazeEpisode(start, start + duration, lat, lon, 7.0 + 8.0 * u[5], 60.0 + 240.0 * u[1])

    def _haze(self, idx: IntArray, t: IntArray, shape: tuple[int, ...]) -> FloatArray:
        """PM2.5 added by every episode at each device and time."""
        out = np.zeros(shape)
        if t.size == 0:
            return out
        s = self._static
        lat, lon = s.lat[idx], s.lon[idx]
        for e in self.episodes(int(t.min()), int(t.max()) + 1):
            out = out + e.peak_pm25 * e.envelope(t) * np.broadcast_to(e.weight(lat, lon), shape)
        return out

    # ------------------------------------------------------------------ kinds

    def _air(
        self, idx: IntArray, salt: UIntArray, t: IntArray, shape: tuple[int, ...]
    ) -> dict[str, Column]:
        s = self._static
        h = local_hour(t)
        winter = season(t)
        demand = traffic_demand(t)
        pollution = np.broadcast_to(s.pollution[idx], shape)
        dsalt = np.broadcast_to(s.district_salt[idx], shape)
        city = np.broadcast_to(self._city_salt, shape)
        regional = 0.28 * _smooth(city, 1, t, 6 * HOUR_MS) + 0.12 * _smooth(
            dsalt, 2, t, 2 * HOUR_MS
        )
        haze = self._haze(idx, t, shape)
        stagnation = np.minimum(haze * (1.0 / 150.0), 1.0)
        background = (
            32.0
            * pollution
            * (1.0 + 0.35 * winter)
            * (1.0 + 0.25 * np.cos(_W * (h - 2.0)))
            * np.exp(regional)
        )
        pm25 = background + 12.0 * demand + haze + 2.5 * _normal(_hash(salt, 10, t))
        pm25 = np.maximum(pm25, 2.0)
        ratio = 1.55 + 0.35 * _uniform(_hash(salt, 11, np.zeros(1, dtype=np.int64)))
        n2 = _hash(salt, 12, t)
        pm10 = pm25 * ratio + 10.0 * demand + 4.0 * _normal(n2)
        no2 = (14.0 + 80.0 * demand * pollution) * (1.0 + 0.35 * stagnation) * np.exp(
            0.6 * regional
        ) + 4.0 * _normal(_hash(salt, 13, t))
        sun = _bump(h, 14.5, 2.8) * (1.0 - 0.45 * winter)
        o3 = 22.0 + 150.0 * sun - 0.22 * no2 + 6.0 * _normal(_hash(salt, 14, t))
        so2 = 6.0 + 5.0 * np.maximum(winter, 0.0) + 3.0 * demand + 1.2 * _normal(_hash(salt, 15, t))
        co = 0.35 + 0.009 * pm25 + 0.35 * demand + 0.05 * _normal(_hash(salt, 16, t))
        temp_base = 14.3 - 13.3 * winter
        temp_day = 5.0 * np.cos(_W * (h - 15.0))
        temperature = (
            temp_base
            + temp_day
            + 2.0 * _smooth(city, 3, t, 12 * HOUR_MS)
            + 0.3 * _normal(n2 >> np.uint64(3))
        )
        humidity = (
            62.0
            - 4.0 * temp_day
            + 12.0 * stagnation
            + 8.0 * _smooth(city, 4, t, 12 * HOUR_MS)
            + 1.5 * _normal(_hash(salt, 17, t))
        )
        noise = 41.0 + 26.0 * np.sqrt(demand) + 1.8 * _normal(_hash(salt, 18, t))
        return {
            "pm25": pm25,
            "pm10": np.maximum(pm10, pm25),
            "no2": np.maximum(no2, 2.0),
            "so2": np.maximum(so2, 1.0),
            "o3": np.maximum(o3, 2.0),
            "co": np.maximum(co, 0.1),
            "temperature": temperature,
            "humidity": np.clip(humidity, 8.0, 100.0),
            "noise": noise,
        }

    def _incident(self, salt: UIntArray, t: IntArray) -> BoolArray:
        window = 2 * HOUR_MS
        k = t // window
        active = np.zeros(t.shape, dtype=np.bool_)
        for back in (0, 1):
            kk = k - back
            h = _hash(salt, 20, kk)
            happens = _uniform(h) < 0.012
            start = kk * window + (_uniform(_mix(h)) * window).astype(np.int64)
            duration = (20 + 70 * _uniform(_mix(h ^ _GOLD))) * 60_000
            active |= happens & (t >= start) & (t < start + duration.astype(np.int64))
        return active

    def _traffic(
        self, idx: IntArray, salt: UIntArray, t: IntArray, shape: tuple[int, ...]
    ) -> dict[str, Column]:
        zero = np.zeros(1, dtype=np.int64)
        u_static = _uniform(_hash(salt, 21, zero))
        lanes = np.floor(2.0 + 4.0 * u_static)  # 2..5 lanes
        v_free = 45.0 + 20.0 * _uniform(_hash(salt, 22, zero))
        demand = traffic_demand(t) * (0.8 + 0.4 * _uniform(_hash(salt, 23, zero)))
        incident = self._incident(salt, t)
        interval_h = KINDS["traffic_counter"].report_interval_s / 3600.0
        n = _hash(salt, 24, t)
        flow = lanes * 1800.0 * interval_h * np.minimum(demand, 1.0) * np.where(incident, 0.6, 1.0)
        count = np.maximum(np.rint(flow * (1.0 + 0.08 * _normal(n))), 0.0)
        speed = v_free * (1.0 - 0.55 * np.minimum(demand, 1.0) ** 2.5) * np.where(
            incident, 0.35, 1.0
        ) + 2.0 * _normal(n >> np.uint64(5))
        occupancy = (2.5 + 32.0 * np.minimum(demand, 1.0) ** 2 + np.where(incident, 35.0, 0.0)) * (
            1.0 + 0.06 * _normal(n >> np.uint64(9))
        )
        return {
            "vehicle_count": count,
            "avg_speed": np.maximum(speed, 3.0),
            "occupancy": np.clip(occupancy, 0.0, 100.0),
        }

    def _parking(
        self, idx: IntArray, salt: UIntArray, t: IntArray, shape: tuple[int, ...]
    ) -> dict[str, Column]:
        zero = np.zeros(1, dtype=np.int64)
        h = local_hour(t)
        weekend = weekday(t) >= 5
        commercial = _uniform(_hash(salt, 30, zero)) < 0.6
        p_commercial = 0.15 + np.where(weekend, 0.55, 0.7) * _bump(h, 14.0, 3.8)
        p_residential = 0.9 - 0.5 * _bump(h, 13.0, 3.5) * np.where(weekend, 0.5, 1.0)
        p = np.where(commercial, p_commercial, p_residential)
        slot = t // (30 * 60_000)  # a space keeps its state for half-hour blocks
        return {"occupied": _uniform(_hash(salt, 31, slot)) < p}

    def _leak(
        self, salt: UIntArray, t: IntArray
    ) -> tuple[FloatArray, BoolArray, FloatArray, FloatArray]:
        """(rate m³/h, active, volume so far m³, hours into the current leak)."""
        zero = np.zeros(1, dtype=np.int64)
        h = _hash(salt, 40, zero)
        leaky = _uniform(h) < 0.12
        rate = np.where(leaky, 0.015 + 0.07 * _uniform(_mix(h)), 0.0)
        period = (6.0 + 14.0 * _uniform(_mix(h ^ _GOLD))) * DAY_MS
        duty = 0.2 + 0.3 * _uniform(_mix(h + _GOLD))
        phase = _uniform(_mix(h * _GOLD)) * period
        x = (t.astype(np.float64) - phase) / period
        cycles = np.floor(x)
        into = (x - cycles) * period  # ms into the current cycle
        on_ms = duty * period
        active = into < on_ms
        volume = rate * (cycles * on_ms + np.minimum(into, on_ms)) * (1.0 / HOUR_MS)
        return rate, active, volume, into * (1.0 / HOUR_MS)

    def _installed(self, salt: UIntArray) -> FloatArray:
        """Installation time (epoch ms), 2021-01-01 plus up to four years."""
        u = _uniform(_hash(salt, 50, np.zeros(1, dtype=np.int64)))
        return 1_609_459_200_000.0 + u * (4 * 365.25 * DAY_MS)

    def _meter_total(
        self, salt: UIntArray, t: IntArray, profile: Profile, mean_rate: FloatArray
    ) -> FloatArray:
        """The exact integral of ``mean_rate * profile`` since installation, plus a start reading."""
        installed = self._installed(salt)
        t0 = installed.astype(np.int64)
        used = mean_rate * (profile.integral_h(t) - profile.integral_h(t0))
        start_reading = 5.0 * _uniform(_hash(salt, 51, np.zeros(1, dtype=np.int64)))
        return start_reading + np.maximum(used, 0.0)

    def _water(
        self, idx: IntArray, salt: UIntArray, t: IntArray, shape: tuple[int, ...]
    ) -> dict[str, Column]:
        zero = np.zeros(1, dtype=np.int64)
        u = _uniform(_hash(salt, 41, zero))
        mean_rate = np.where(u < 0.85, 0.02 + 0.05 * u, 0.15 + 0.5 * (u - 0.85))
        rate, active, leak_volume, leak_hours = self._leak(salt, t)
        leaking = active & (rate > 0)
        volume = self._meter_total(salt, t, WATER_PROFILE, mean_rate)
        # leak volume is cumulative since the epoch; count only what leaked since installation
        t0 = self._installed(salt).astype(np.int64)
        _, _, leak_before, _ = self._leak(salt, np.broadcast_to(t0, t.shape))
        volume = volume + np.maximum(leak_volume - leak_before, 0.0)
        n = _hash(salt, 42, t)
        demand = mean_rate * WATER_PROFILE.rate(t)
        flow = demand * (1.0 + 0.15 * _normal(n)) + np.where(leaking, rate, 0.0)
        pressure = (
            300.0
            + 120.0 * _uniform(_hash(salt, 43, zero))
            - 40.0 * (WATER_PROFILE.rate(t) - 1.0)
            + 6.0 * _normal(n >> np.uint64(7))
        )
        return {
            "water_volume": volume,
            "water_flow": np.maximum(flow, 0.0),
            "water_pressure": pressure,
            "leak": leaking & (leak_hours > 12.0),
            "reverse_flow": _uniform(_hash(salt, 44, t)) < 0.0005,
        }

    def _electricity(
        self, idx: IntArray, salt: UIntArray, t: IntArray, shape: tuple[int, ...]
    ) -> dict[str, Column]:
        zero = np.zeros(1, dtype=np.int64)
        u = _uniform(_hash(salt, 60, zero))
        mean_w = np.where(u < 0.8, 250.0 + 700.0 * u, 2000.0 + 60000.0 * (u - 0.8) ** 2)
        n = _hash(salt, 61, t)
        energy = self._meter_total(salt, t, ELECTRICITY_PROFILE, mean_w * 0.001)
        power = mean_w * ELECTRICITY_PROFILE.rate(t) * (1.0 + 0.12 * _normal(n))
        voltage = (
            229.0 - 6.0 * (ELECTRICITY_PROFILE.rate(t) - 1.0) + 1.5 * _normal(n >> np.uint64(5))
        )
        return {"energy": energy, "power": np.maximum(power, 0.0), "voltage": voltage}

    def _gas(
        self, idx: IntArray, salt: UIntArray, t: IntArray, shape: tuple[int, ...]
    ) -> dict[str, Column]:
        u = _uniform(_hash(salt, 70, np.zeros(1, dtype=np.int64)))
        mean_rate = 0.015 + 0.04 * u
        return {"gas_volume": self._meter_total(salt, t, GAS_PROFILE, mean_rate)}

    # ------------------------------------------------------------------ health

    def _health(
        self, kind: str, idx: IntArray, salt: UIntArray, t: IntArray, shape: tuple[int, ...]
    ) -> dict[str, Column]:
        zero = np.zeros(1, dtype=np.int64)
        s = self._static
        interval_ms = KINDS[kind].report_interval_s * 1000
        indoor = {"water_meter": -12.0, "gas_meter": -10.0, "electricity_meter": -6.0}.get(
            kind, 0.0
        )
        median = (
            np.broadcast_to(s.site_rsrp[idx], shape) + indoor + 6.0 * _normal(_hash(salt, 80, zero))
        )
        slot = t // 60_000
        n = _hash(salt, 81, slot)
        # devices report whole dBm; the coverage level follows the reported figure
        rsrp: FloatArray = np.rint(np.clip(median + 2.0 * _normal(n), -140.0, -50.0))
        ecl = np.where(rsrp >= -105.0, 0.0, np.where(rsrp >= -115.0, 1.0, 2.0))
        snr = np.clip(0.45 * (rsrp + 112.0) + 1.5 * _normal(n >> np.uint64(5)), -10.0, 25.0)
        installed = self._installed(salt)
        uplinks = np.maximum(np.floor((t - installed) / interval_ms), 0.0)
        if kind in MAINS_KINDS:
            battery = np.broadcast_to(97.0 + 3.0 * _uniform(_hash(salt, 82, zero)), shape).astype(
                np.float64
            )
            voltage = np.broadcast_to(3.62 + 0.04 * _uniform(_hash(salt, 83, zero)), shape).astype(
                np.float64
            )
        else:
            # the drain per uplink grows with the coverage level (repetitions): ECL 0/1/2
            median_ecl = np.where(median >= -105.0, 1.0, np.where(median >= -115.0, 2.5, 7.0))
            life_years = 6.0 + 4.0 * _uniform(_hash(salt, 84, zero))
            per_uplink = 100.0 * interval_ms / (life_years * 365.25 * DAY_MS) * median_ecl
            per_battery = np.floor(100.0 / per_uplink)
            since_change = uplinks - per_battery * np.floor(uplinks / per_battery)
            battery = 100.0 - per_uplink * since_change
            voltage = np.asarray(
                3.28 + 0.39 * np.power(np.maximum(battery, 0.0) / 100.0, 0.25), dtype=np.float64
            )
        return {
            "battery": battery,
            "battery_voltage": voltage,
            "rsrp": rsrp,
            "snr": snr,
            "ecl": ecl,
            "uplinks": uplinks,
        }


_KIND_MODELS = {
    "air_station": CityModel._air,
    "traffic_counter": CityModel._traffic,
    "parking_sensor": CityModel._parking,
    "water_meter": CityModel._water,
    "electricity_meter": CityModel._electricity,
    "gas_meter": CityModel._gas,
}


def _finish(values: dict[str, Column]) -> dict[str, Column]:
    """Round to each metric's resolution and keep within the catalog's range."""
    out: dict[str, Column] = {}
    for name, col in values.items():
        spec = METRICS[name]
        if spec.type == "bool":
            out[name] = np.asarray(col, dtype=np.bool_)
            continue
        assert spec.lo is not None and spec.hi is not None
        arr = np.clip(np.asarray(col, dtype=np.float64), spec.lo, spec.hi)
        decimals = 0 if spec.integer else DECIMALS.get(name, 3)
        out[name] = np.round(arr, decimals)
    return out
