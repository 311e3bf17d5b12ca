"""Short-term PM2.5 forecast per district: direct multi-horizon ridge regression (numpy).

The model, for each district's hourly means ``y`` (µg/m³):

* the diurnal climatology ``P(k)``: for each hour of the local day ``k``, the mean of ``y``
  over the trailing :data:`PROFILE_DAYS` days (recomputed at every forecast origin, so the
  season follows by itself);
* anomalies ``a(s) = y(s) - P(hour of s)``; one ridge regression per horizon ``h`` (1..24)
  predicts ``a(t + h)`` from the district's anomalies at lags 0, 1, 2, 3, 6, 12 and 23 h, the
  change over the last 3 h and the mean anomaly of all districts now and 3 h ago (regional
  weather moves neighbouring districts together) -- twice: once for every hour and once more
  for hours in a haze (anomaly now above :data:`HAZE_ANOMALY`), whose build-up and clearing
  follow other dynamics than ordinary hours. One set of coefficients serves every district
  (pooled: more data, no district over-fitted);
* the forecast is ``P(hour of t + h) + â(t + h)``; errors grow with the level (a haze
  multiplies concentrations), so the 80 % interval is relative: the 10th and 90th percentiles
  of each horizon's residuals divided by the forecast level (at least :data:`SCALE_FLOOR`) on
  the last :data:`CALIBRATION_SHARE` of the history, held out of the fit that produced them
  (split conformal), times the level; then the model is refitted on all of the history.

``skill`` reports the RMSE of the model, of persistence (``y(t + h) = y(t)``) and of the
diurnal climatology (``mean y`` by hour of day over the trailing days) on that held-out part,
so the answer says how much to trust it. Pure: arrays in, arrays out, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

HOUR_MS = 3_600_000
HORIZONS = 24
PROFILE_DAYS = 28
LAGS: tuple[int, ...] = (0, 1, 2, 3, 6, 12, 23)
#: the least history (hours of hourly means) the model is trained on
MIN_HISTORY_HOURS = 7 * 24
CALIBRATION_SHARE = 0.25
RIDGE = 1.0
INTERVAL = (0.10, 0.90)
#: an anomaly (µg/m³ above the diurnal climatology) from which an hour counts as haze
HAZE_ANOMALY = 20.0
#: the least level (µg/m³) interval widths scale with
SCALE_FLOOR = 10.0
SKILL_HORIZONS: tuple[int, ...] = (1, 6, 24)


class HistoryTooShortError(ValueError):
    """Too little history to train on (the caller says so instead of guessing)."""


@dataclass(frozen=True, slots=True)
class ForecastModel:
    coef: FloatArray  #: (HORIZONS, features)
    q_lo: FloatArray  #: (HORIZONS,) quantiles of residual / forecast level
    q_hi: FloatArray
    trained_until: int  #: epoch ms of the end of the newest hour trained on
    hours_used: int
    skill: dict[int, dict[str, float]]  #: horizon -> rmse of model, persistence, climatology


@dataclass(frozen=True, slots=True)
class Forecast:
    """One district's forecast from the hour after ``origin``."""

    times: IntArray  #: hour starts (epoch ms) of the forecast hours
    mean: FloatArray
    low: FloatArray
    high: FloatArray


def hour_of_day(hours: IntArray, local_offset_ms: int) -> IntArray:
    return ((hours + local_offset_ms) // HOUR_MS) % 24


def trailing_profile(z: FloatArray, hod: IntArray, days: int = PROFILE_DAYS) -> FloatArray:
    """``P[d, t, k]``: mean of ``z[d]`` at hour-of-day ``k`` over the ``days`` days up to ``t``.

    ``z``: (D, T), hourly, contiguous; NaN is missing. Also returns NaN where no value exists.
    """
    d_count, t_count = z.shape
    out = np.full((d_count, t_count, 24), np.nan)
    for k in range(24):
        idx = np.nonzero(hod == k)[0]
        if idx.size == 0:
            continue
        sub = z[:, idx]
        ok = ~np.isnan(sub)
        csum = np.cumsum(np.where(ok, sub, 0.0), axis=1)
        ccnt = np.cumsum(ok, axis=1)
        lag_sum = np.concatenate([np.zeros((d_count, days)), csum[:, :-days]], axis=1)[
            :, : sub.shape[1]
        ]
        lag_cnt = np.concatenate([np.zeros((d_count, days)), ccnt[:, :-days]], axis=1)[
            :, : sub.shape[1]
        ]
        with np.errstate(invalid="ignore", divide="ignore"):
            roll = (csum - lag_sum) / (ccnt - lag_cnt)
        roll[(ccnt - lag_cnt) == 0] = np.nan
        # for each t: the newest sample of hour k at or before t
        pos = np.searchsorted(idx, np.arange(t_count), side="right") - 1
        have = pos >= 0
        out[:, have, k] = roll[:, pos[have]]
    return out


def _features(
    z: FloatArray, prof: FloatArray, hod: IntArray, origins: IntArray
) -> tuple[FloatArray, FloatArray]:
    """(features (D, N, F), anomaly base per origin) for origins ``t`` (indices into z)."""
    d_count = z.shape[0]
    di = np.arange(d_count)[:, None]

    def anomaly(lag: int) -> FloatArray:
        s = origins - lag
        return np.asarray(z[:, s] - prof[di, origins[None, :], hod[s][None, :]])

    lags = [anomaly(lag) for lag in LAGS]
    a0, a3 = lags[0], lags[3]
    city0 = np.nanmean(a0, axis=0, keepdims=True) * np.ones((d_count, 1))
    city3 = np.nanmean(a3, axis=0, keepdims=True) * np.ones((d_count, 1))
    haze = (a0 > HAZE_ANOMALY).astype(np.float64)
    base = [*lags, a0 - a3, city0, city3]
    feats = [np.ones_like(a0), haze, *base, *(haze * f for f in base)]
    return np.stack(feats, axis=-1), a0


def _targets(
    z: FloatArray, prof: FloatArray, hod: IntArray, origins: IntArray, h: int
) -> FloatArray:
    d_count = z.shape[0]
    di = np.arange(d_count)[:, None]
    s = origins + h
    return np.asarray(z[:, s] - prof[di, origins[None, :], hod[s][None, :]])


def _solve(x: FloatArray, y: FloatArray) -> FloatArray:
    ok = ~np.isnan(y) & ~np.isnan(x).any(axis=1)
    x, y = x[ok], y[ok]
    penalty = RIDGE * np.eye(x.shape[1])
    penalty[0, 0] = 0.0
    return np.asarray(np.linalg.solve(x.T @ x + penalty, x.T @ y))


def _prepare(
    y: FloatArray, hours: IntArray, local_offset_ms: int
) -> tuple[FloatArray, IntArray, FloatArray]:
    z: FloatArray = np.maximum(np.asarray(y, dtype=np.float64), 0.0)
    hod = hour_of_day(hours, local_offset_ms)
    prof = trailing_profile(z, hod)
    return z, hod, prof


def _fit_coef(z: FloatArray, prof: FloatArray, hod: IntArray, origins: IntArray) -> FloatArray:
    x, _ = _features(z, prof, hod, origins)
    xf = x.reshape(-1, x.shape[-1])
    coef = np.zeros((HORIZONS, x.shape[-1]))
    for h in range(1, HORIZONS + 1):
        yt = _targets(z, prof, hod, origins, h).reshape(-1)
        coef[h - 1] = _solve(xf, yt)
    return coef


def _origins(t_count: int, start: int, stop: int) -> IntArray:
    """Origins with every lag and every horizon inside [start, stop)."""
    first = max(start, max(LAGS) + 24)  # a day of profile before the first origin
    return np.arange(first, stop - HORIZONS, dtype=np.int64)


def fit(
    hours: IntArray, y: FloatArray, local_offset_ms: int = 0, *, min_hours: int = MIN_HISTORY_HOURS
) -> ForecastModel:
    """Train on hourly means ``y`` (districts x hours, NaN missing) at hour starts ``hours``."""
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] != hours.size:
        raise ValueError("y must be (districts, hours) aligned with hours")
    have = np.sum(~np.isnan(y), axis=1)
    if y.shape[0] == 0 or hours.size < min_hours or int(have.min()) < min_hours * 0.8:
        got = int(have.min()) if y.shape[0] else 0
        raise HistoryTooShortError(
            f"{got} hourly means of history; the forecast needs at least {min_hours} "
            f"({min_hours // 24} days) in every district"
        )
    z, hod, prof = _prepare(y, hours, local_offset_ms)
    t_count = hours.size
    split = int(t_count * (1 - CALIBRATION_SHARE))
    fit_origins = _origins(t_count, 0, split)
    cal_origins = _origins(t_count, split, t_count)
    if fit_origins.size < 48 or cal_origins.size < 24:
        raise HistoryTooShortError(
            f"{t_count} hours of history are too few to fit and calibrate the forecast"
        )
    coef = _fit_coef(z, prof, hod, fit_origins)
    x_cal, _ = _features(z, prof, hod, cal_origins)
    q_lo = np.zeros(HORIZONS)
    q_hi = np.zeros(HORIZONS)
    skill: dict[int, dict[str, float]] = {}
    di = np.arange(z.shape[0])[:, None]
    for h in range(1, HORIZONS + 1):
        pred = x_cal @ coef[h - 1]
        target = _targets(z, prof, hod, cal_origins, h)
        s = cal_origins + h
        base = prof[di, cal_origins[None, :], hod[s][None, :]]
        model_y = np.maximum(base + pred, 0.0)
        rel = ((target - pred) / np.maximum(model_y, SCALE_FLOOR)).reshape(-1)
        rel = rel[~np.isnan(rel)]
        if rel.size:
            lo, hi = np.quantile(rel, INTERVAL)
            # the interval holds its own forecast even where held-out errors lean one way
            q_lo[h - 1], q_hi[h - 1] = min(float(lo), 0.0), max(float(hi), 0.0)
        if h in SKILL_HORIZONS:
            truth = y[:, s]
            persistence = y[:, cal_origins]
            clim = prof[di, cal_origins[None, :], hod[s][None, :]]
            skill[h] = {
                "rmse": _rmse(model_y, truth),
                "rmse_persistence": _rmse(persistence, truth),
                "rmse_climatology": _rmse(clim, truth),
            }
    coef = _fit_coef(z, prof, hod, _origins(t_count, 0, t_count))
    return ForecastModel(coef, q_lo, q_hi, int(hours[-1]) + HOUR_MS, int(t_count), skill)


def _rmse(a: FloatArray, b: FloatArray) -> float:
    d = (a - b).reshape(-1)
    d = d[~np.isnan(d)]
    return float(np.sqrt(np.mean(d * d))) if d.size else float("nan")


def predict_at(
    model: ForecastModel,
    hours: IntArray,
    y: FloatArray,
    origins: IntArray,
    local_offset_ms: int = 0,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Forecasts from each origin index (its hour is the newest known): arrays of shape
    (districts, origins, HORIZONS) of mean, low and high (µg/m³).

    ``hours`` must extend HORIZONS hours past the last origin only for their hour of day; the
    values there are not read.
    """
    z, hod, prof = _prepare(np.asarray(y, dtype=np.float64), hours, local_offset_ms)
    x, _ = _features(z, prof, hod, origins)
    d_count = z.shape[0]
    di = np.arange(d_count)[:, None]
    shape = (d_count, origins.size, HORIZONS)
    mean, low, high = np.empty(shape), np.empty(shape), np.empty(shape)
    for h in range(1, HORIZONS + 1):
        s = origins + h
        level = np.maximum(prof[di, origins[None, :], hod[s][None, :]] + x @ model.coef[h - 1], 0.0)
        scale = np.maximum(level, SCALE_FLOOR)
        mean[:, :, h - 1] = level
        low[:, :, h - 1] = level + model.q_lo[h - 1] * scale
        high[:, :, h - 1] = level + model.q_hi[h - 1] * scale
    return np.maximum(mean, 0.0), np.maximum(low, 0.0), np.maximum(high, 0.0)


def forecast(
    model: ForecastModel, hours: IntArray, y: FloatArray, local_offset_ms: int = 0
) -> list[Forecast]:
    """Each district's next HORIZONS hours from its newest hour ``hours[-1]``.

    Missing recent hours are filled from the newest known value so that every district gets
    an answer; a district with no value in the last day is NaN.
    """
    y = np.array(y, dtype=np.float64)
    for d in range(y.shape[0]):  # carry the last known value forward over gaps
        row = y[d]
        ok = ~np.isnan(row)
        if ok.any():
            idx = np.where(ok, np.arange(row.size), 0)
            np.maximum.accumulate(idx, out=idx)
            filled = row[idx]
            filled[: int(np.argmax(ok))] = np.nan
            y[d] = filled
    ext = np.concatenate([hours, hours[-1] + HOUR_MS * np.arange(1, HORIZONS + 1)])
    y_ext = np.concatenate([y, np.full((y.shape[0], HORIZONS), np.nan)], axis=1)
    origin = np.array([hours.size - 1], dtype=np.int64)
    mean, low, high = predict_at(model, ext, y_ext, origin, local_offset_ms)
    times = ext[hours.size :]
    return [Forecast(times, mean[d, 0], low[d, 0], high[d, 0]) for d in range(y.shape[0])]
