"""Alarm rules: the TOML file of ``[[rule]]`` tables, parsed and checked (INTERFACES.md 10.6).

Every rule becomes a threshold over one number per subject -- a metric's aggregate, a
district's AQI, a congestion index, a leak verdict, a device's silence in report intervals, a
gateway's seconds offline -- with a raise side (``above`` or ``below``), a clear side
(``clear``; hysteresis) and the times the condition must hold (``for``, ``clear_for``).

A bad file raises :class:`RulesError` naming the file, the line and the reason.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from analytics.aqi import STANDARDS
from analytics.leaks import DEFAULT_NIGHT_FLOW_THRESHOLD
from citysense.catalog import KINDS, METRICS
from citysense.errors import ConfigError
from citysense.model import PLACE_ID_RE

RULE_KINDS: tuple[str, ...] = (
    "metric",
    "aqi",
    "congestion",
    "leak",
    "device_offline",
    "gateway_offline",
    "battery_low",
    "radio_poor",
)
SEVERITIES: tuple[str, ...] = ("info", "minor", "major", "critical")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}
AGGS: tuple[str, ...] = ("mean", "min", "max", "last")
GROUPS: tuple[str, ...] = ("device", "site", "district")
#: AQI levels (China HJ 633 and US EPA alike): level -> the lowest AQI of that level.
AQI_LEVEL_FLOOR = {1: 0, 2: 51, 3: 101, 4: 151, 5: 201, 6: 301}
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}

_KEYS: dict[str, frozenset[str]] = {
    "metric": frozenset({"metric", "agg", "window", "group_by", "above", "below", "clear"}),
    "aqi": frozenset({"above", "level", "clear", "standard"}),
    "congestion": frozenset({"above", "clear", "window", "group_by"}),
    "leak": frozenset({"above", "window"}),
    "device_offline": frozenset({"intervals"}),
    "gateway_offline": frozenset(),
    "battery_low": frozenset({"below", "clear"}),
    "radio_poor": frozenset({"metric", "window", "above", "below", "clear"}),
}
_COMMON = frozenset({"name", "kind", "for", "clear_for", "severity", "district", "device_kind"})


class RulesError(ConfigError):
    """A rules file that cannot be used: ``file:line: reason``."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule, normalised: raise when ``value`` is past ``threshold`` (``above``: greater,
    or at least with ``inclusive``; else smaller) for ``for_ms``; clear when it is back past
    ``clear`` for ``clear_for_ms``."""

    name: str
    kind: str
    severity: str
    threshold: float
    above: bool
    clear: float
    for_ms: int
    clear_for_ms: int
    metric: str | None = None
    agg: str = "mean"
    window_ms: int = 15 * 60_000
    group_by: str = "device"
    district: str | None = None
    device_kind: str | None = None
    standard: str = "hj633-2012"
    inclusive: bool = False
    night_flow: float = DEFAULT_NIGHT_FLOW_THRESHOLD  #: leak rules: minimum night flow (m³/h) above which a meter leaks
    line: int = 0
    source: dict[str, Any] = field(default_factory=dict, compare=False)

    def breached(self, value: float) -> bool:
        if self.above:
            return value >= self.threshold if self.inclusive else value > self.threshold
        return value <= self.threshold if self.inclusive else value < self.threshold

    def cleared(self, value: float) -> bool:
        return value < self.clear if self.above else value > self.clear

    def public(self) -> dict[str, Any]:
        """The rule as written in the file (for ``GET /api/v1/alarm-rules``)."""
        return {**self.source, "name": self.name, "kind": self.kind, "severity": self.severity}


def parse_duration(text: object, what: str) -> int:
    """``"15m"`` -> milliseconds (ms, s, m, h, d); a bare number is seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool) and text >= 0:
        return int(text * 1000)
    m = _DURATION_RE.match(str(text).strip())
    if not m:
        raise ValueError(f"{what} must be a duration like 30s, 15m, 2h, not {text!r}")
    return int(float(m.group(1)) * _UNIT_MS[m.group(2)])


def _rule_lines(text: str) -> list[int]:
    """Line numbers (1-based) of each ``[[rule]]`` header, in order."""
    return [
        i
        for i, line in enumerate(text.splitlines(), 1)
        if re.match(r"^\s*\[\[\s*rule\s*\]\]", line)
    ]


def _key_line(text: str, start: int, end: int | None, key: str) -> int:
    lines = text.splitlines()
    stop = end - 1 if end else len(lines)
    pattern = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=")
    for i in range(start, stop):
        if pattern.match(lines[i]):
            return i + 1
    return start


def _number(table: dict[str, Any], key: str) -> float | None:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number, not {value!r}")
    return float(value)


def _choice(table: dict[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
    value = table.get(key, default)
    if value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(choices)}, not {value!r}")
    return str(value)


def _sides(
    table: dict[str, Any], default_above: float | None, default_below: float | None
) -> tuple[float, bool, float]:
    """(threshold, above?, clear) from ``above``/``below``/``clear`` with defaults."""
    above, below = _number(table, "above"), _number(table, "below")
    if above is not None and below is not None:
        raise ValueError("give either above or below, not both")
    if above is None and below is None:
        above, below = default_above, default_below
        if above is None and below is None:
            raise ValueError("needs a threshold: above = … or below = …")
    clear = _number(table, "clear")
    if above is not None:
        if clear is None:
            clear = above
        if clear > above:
            raise ValueError(f"clear ({clear:g}) must not be above the threshold ({above:g})")
        return above, True, clear
    assert below is not None
    if clear is None:
        clear = below
    if clear < below:
        raise ValueError(f"clear ({clear:g}) must not be below the threshold ({below:g})")
    return below, False, clear


def _build(table: dict[str, Any]) -> Rule:
    kind = table.get("kind")
    if kind not in RULE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(RULE_KINDS)}, not {kind!r}")
    name = table.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"name must match {NAME_RE.pattern}, not {name!r}")
    unknown = set(table) - _COMMON - _KEYS[kind]
    if unknown:
        first = sorted(unknown)[0]
        raise ValueError(f"{first}: {kind} rules take no {', '.join(sorted(unknown))}")
    severity = _choice(table, "severity", SEVERITIES, "major")
    for_ms = parse_duration(table.get("for", "0s"), "for")
    clear_for_ms = parse_duration(table.get("clear_for", table.get("for", "0s")), "clear_for")
    district = table.get("district")
    if district is not None and not (isinstance(district, str) and PLACE_ID_RE.fullmatch(district)):
        raise ValueError(f"district {district!r} is not a valid district id")
    device_kind = table.get("device_kind")
    if device_kind is not None and device_kind not in KINDS:
        raise ValueError(f"device_kind must be one of {', '.join(KINDS)}, not {device_kind!r}")
    common: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "severity": severity,
        "for_ms": for_ms,
        "clear_for_ms": clear_for_ms,
        "district": district,
        "device_kind": device_kind,
        "source": dict(table),
    }
    window_ms = parse_duration(table.get("window", "15m"), "window")
    if window_ms < 1000:
        raise ValueError("window must be at least 1s")
    if kind == "metric":
        metric = table.get("metric")
        if metric not in METRICS or METRICS[str(metric)].type != "float":
            raise ValueError(f"metric {metric!r} is not a numeric metric of the catalog")
        threshold, above, clear = _sides(table, None, None)
        return Rule(
            threshold=threshold,
            above=above,
            clear=clear,
            metric=str(metric),
            agg=_choice(table, "agg", AGGS, "mean"),
            window_ms=window_ms,
            group_by=_choice(table, "group_by", GROUPS, "device"),
            **common,
        )
    if kind == "aqi":
        level = table.get("level")
        if level is not None:
            if "above" in table:
                raise ValueError("give either above or level, not both")
            if level not in AQI_LEVEL_FLOOR:
                raise ValueError(f"level must be 1-6, not {level!r}")
            table = {**table, "above": AQI_LEVEL_FLOOR[int(level)]}
        threshold, above, clear = _sides(table, None, None)
        if not above:
            raise ValueError("aqi rules take above (an AQI value) or level")
        standard = _choice(table, "standard", STANDARDS, "hj633-2012")
        return Rule(
            threshold=threshold,
            above=True,
            clear=clear,
            inclusive=True,
            group_by="district",
            window_ms=24 * 3_600_000,
            standard=standard,
            **common,
        )
    if kind == "congestion":
        threshold, above, clear = _sides(table, 6.0, None)
        if not above:
            raise ValueError("congestion rules take above (an index 0-10)")
        group_by = _choice(table, "group_by", ("site", "district"), "district")
        return Rule(
            threshold=threshold,
            above=True,
            clear=clear,
            inclusive=True,
            window_ms=window_ms,
            group_by=group_by,
            **common,
        )
    if kind == "leak":
        flow = _number(table, "above")
        return Rule(
            threshold=0.5,
            above=True,
            clear=0.5,
            window_ms=parse_duration(table.get("window", "24h"), "window"),
            group_by="device",
            metric="water_flow",
            night_flow=DEFAULT_NIGHT_FLOW_THRESHOLD if flow is None else flow,
            **common,
        )
    if kind == "device_offline":
        intervals = _number(table, "intervals")
        intervals = 3.0 if intervals is None else intervals
        if intervals <= 0:
            raise ValueError("intervals must be positive")
        return Rule(threshold=intervals, above=True, clear=intervals, **common)
    if kind == "gateway_offline":
        return Rule(
            threshold=for_ms / 1000,
            above=True,
            clear=for_ms / 1000,
            inclusive=True,
            group_by="gateway",
            **{**common, "for_ms": 0, "clear_for_ms": 0},
        )
    if kind == "battery_low":
        threshold, above, clear = _sides(table, None, 15.0)
        if above:
            raise ValueError("battery_low rules take below (a charge in %)")
        return Rule(
            threshold=threshold,
            above=False,
            clear=clear,
            metric="battery",
            agg="last",
            window_ms=7 * 86_400_000,
            **common,
        )
    # radio_poor: rsrp (dBm) below a level, or ecl above one, as a mean over the window
    metric = table.get("metric", "rsrp")
    if metric not in ("rsrp", "snr", "ecl"):
        raise ValueError(f"radio_poor metric must be rsrp, snr or ecl, not {metric!r}")
    if metric == "ecl":
        threshold, above, clear = _sides(table, 1.5, None)
    else:
        threshold, above, clear = _sides(table, None, -120.0 if metric == "rsrp" else -3.0)
    return Rule(
        threshold=threshold,
        above=above,
        clear=clear,
        metric=str(metric),
        agg="mean",
        window_ms=parse_duration(table.get("window", "6h"), "window"),
        **common,
    )


def parse_rules(text: str, path: str = "<rules>") -> list[Rule]:
    """Rules of a TOML text; :class:`RulesError` with ``path:line: reason``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise RulesError(f"{path}:{m.group(1) if m else 1}: {exc}") from exc
    extra = set(data) - {"rule"}
    if extra:
        raise RulesError(f"{path}:1: unknown top-level key(s) {', '.join(sorted(extra))}")
    tables = data.get("rule", [])
    if not isinstance(tables, list) or not tables:
        raise RulesError(f"{path}:1: no [[rule]] tables")
    starts = _rule_lines(text)
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for i, table in enumerate(tables):
        start = starts[i] if i < len(starts) else 1
        end = starts[i + 1] if i + 1 < len(starts) else None
        try:
            rule = _build(table)
        except ValueError as exc:
            key = next((k for k in table if re.match(rf"^{re.escape(k)}\b", str(exc))), None)
            line = _key_line(text, start, end, key) if key else start
            raise RulesError(f"{path}:{line}: rule {i + 1}: {exc}") from exc
        if rule.name in seen:
            line = _key_line(text, start, end, "name")
            raise RulesError(
                f"{path}:{line}: rule name {rule.name!r} is already used on line {seen[rule.name]}"
            )
        seen[rule.name] = start
        rules.append(replace(rule, line=start))
    return rules


def load_rules(path: str | Path) -> list[Rule]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"{path}:0: cannot read the rules file: {exc}") from exc
    return parse_rules(text, str(path))
