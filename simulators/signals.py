"""The building blocks of the simulated city's signals (numpy): a counter-based hash
(splitmix64) giving uniform, normal and smooth noise that is a pure function of its keys,
local time of day, consumption profiles with exact integrals, and haze episodes.
:class:`~simulators.models.CityModel` composes them into the sensor models.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from simulators.city import KM_PER_DEG_LAT

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
