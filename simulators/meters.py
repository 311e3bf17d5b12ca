"""The utility meters of the simulated city: water (with recurring leaks), electricity and
gas totals that are the exact integral of their flow since installation.

``water``, ``electricity`` and ``gas`` have the signature of
:class:`~simulators.models.CityModel`'s kind models (the model itself is not needed).
"""

from __future__ import annotations

import numpy as np

from simulators.signals import (
    _GOLD,
    DAY_MS,
    ELECTRICITY_PROFILE,
    GAS_PROFILE,
    HOUR_MS,
    WATER_PROFILE,
    BoolArray,
    Column,
    FloatArray,
    IntArray,
    Profile,
    UIntArray,
    _hash,
    _mix,
    _normal,
    _uniform,
)


def leak(salt: UIntArray, t: IntArray) -> tuple[FloatArray, BoolArray, FloatArray, FloatArray]:
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


def installed(salt: UIntArray) -> FloatArray:
    """Installation time (epoch ms), 2021-01-01 plus up to four years."""
    u = _uniform(_hash(salt, 50, np.zeros(1, dtype=np.int64)))
    return 1_609_459_200_000.0 + u * (4 * 365.25 * DAY_MS)


def meter_total(
    salt: UIntArray, t: IntArray, profile: Profile, mean_rate: FloatArray
) -> FloatArray:
    """The exact integral of ``mean_rate * profile`` since installation, plus a start reading."""
    t0 = installed(salt).astype(np.int64)
    used = mean_rate * (profile.integral_h(t) - profile.integral_h(t0))
    start_reading = 5.0 * _uniform(_hash(salt, 51, np.zeros(1, dtype=np.int64)))
    return start_reading + np.maximum(used, 0.0)


def water(
    model: object, idx: IntArray, salt: UIntArray, t: IntArray, shape: tuple[int, ...]
) -> dict[str, Column]:
    zero = np.zeros(1, dtype=np.int64)
    u = _uniform(_hash(salt, 41, zero))
    mean_rate = np.where(u < 0.85, 0.02 + 0.05 * u, 0.15 + 0.5 * (u - 0.85))
    rate, active, leak_volume, leak_hours = leak(salt, t)
    leaking = active & (rate > 0)
    volume = meter_total(salt, t, WATER_PROFILE, mean_rate)
    # leak volume is cumulative since the epoch; count only what leaked since installation
    t0 = installed(salt).astype(np.int64)
    _, _, leak_before, _ = leak(salt, np.broadcast_to(t0, t.shape))
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


def electricity(
    model: object, idx: IntArray, salt: UIntArray, t: IntArray, shape: tuple[int, ...]
) -> dict[str, Column]:
    zero = np.zeros(1, dtype=np.int64)
    u = _uniform(_hash(salt, 60, zero))
    mean_w = np.where(u < 0.8, 250.0 + 700.0 * u, 2000.0 + 60000.0 * (u - 0.8) ** 2)
    n = _hash(salt, 61, t)
    energy = meter_total(salt, t, ELECTRICITY_PROFILE, mean_w * 0.001)
    power = mean_w * ELECTRICITY_PROFILE.rate(t) * (1.0 + 0.12 * _normal(n))
    voltage = 229.0 - 6.0 * (ELECTRICITY_PROFILE.rate(t) - 1.0) + 1.5 * _normal(n >> np.uint64(5))
    return {"energy": energy, "power": np.maximum(power, 0.0), "voltage": voltage}


def gas(
    model: object, idx: IntArray, salt: UIntArray, t: IntArray, shape: tuple[int, ...]
) -> dict[str, Column]:
    u = _uniform(_hash(salt, 70, np.zeros(1, dtype=np.int64)))
    mean_rate = 0.015 + 0.04 * u
    return {"gas_volume": meter_total(salt, t, GAS_PROFILE, mean_rate)}
