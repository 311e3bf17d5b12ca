"""Radio figures and power-saving timers, as pure functions.

* :func:`parse_radio` reads the lines of ``AT+NUESTATS`` (BC95: centibels -> dB/dBm),
  ``AT+CENG?`` (SIM7020: dBm/dB, tx power centi-dBm) and ``AT+QENG=0`` (BC66: whole dBm/dB) into :class:`RadioFigures`
  with the same units for every family; "not available" sentinels become ``None``.
* :func:`encode_t3412` / :func:`encode_t3324` / :func:`decode_timer` implement the one-byte
  GPRS timer encodings of ``AT+CPSMS`` (3GPP TS 24.008); :func:`edrx_code` the eDRX cycles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from firmware_bridge.at import split_fields

_SENTINELS = frozenset({-32768, 32767, 65535, 0xFFFFFFFF, -2147483648})


@dataclass(frozen=True, slots=True)
class RadioFigures:
    """One snapshot of a module's radio; ``None`` where the module did not say."""

    rsrp: float | None = None  #: dBm
    rsrq: float | None = None  #: dB
    rssi: float | None = None  #: dBm
    snr: float | None = None  #: dB
    ecl: int | None = None  #: 0, 1, 2
    cell_id: int | None = None
    pci: int | None = None
    earfcn: int | None = None
    tx_power: float | None = None  #: dBm
    band: int | None = None
    tac: int | None = None

    def health_values(self) -> dict[str, float]:
        """The ``device_health`` catalog metrics these figures give (rsrp, snr, ecl)."""
        out: dict[str, float] = {}
        if self.rsrp is not None and -156 <= self.rsrp <= -44:
            out["rsrp"] = self.rsrp
        if self.snr is not None and -30 <= self.snr <= 40:
            out["snr"] = self.snr
        if self.ecl is not None and 0 <= self.ecl <= 2:
            out["ecl"] = float(self.ecl)
        return out

    def extra(self) -> dict[str, object]:
        """Figures outside the catalog (rsrq, rssi, cell id, PCI, EARFCN, ...)."""
        names = ("rsrq", "rssi", "cell_id", "pci", "earfcn", "tx_power", "band", "tac")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


def _int(text: str, base: int = 10) -> int | None:
    try:
        value = int(text.strip(), base)
    except ValueError:
        return None
    return None if value in _SENTINELS else value


def _centi(text: str) -> float | None:
    value = _int(text)
    return None if value is None else value / 10


def _hundredths(text: str) -> float | None:
    value = _int(text)
    return None if value is None else value / 100


def _dbm(text: str) -> float | None:
    """Whole dBm where 128/-128 mean "not available" (BC66 ``+QENG`` tx power)."""
    value = _int(text)
    return None if value is None or abs(value) == 128 else float(value)


def _plain(text: str) -> float | None:
    value = _int(text)
    return None if value is None else float(value)


def _ecl(text: str) -> int | None:
    value = _int(text)
    return value if value is not None and 0 <= value <= 2 else None


def parse_nuestats(lines: Iterable[str]) -> RadioFigures:
    """BC95 ``AT+NUESTATS`` / ``=RADIO`` / ``=CELL`` lines; powers are centibels."""
    fields: dict[str, str] = {}
    serving: list[str] | None = None
    for line in lines:
        text = line.strip()
        if text.startswith("NUESTATS:CELL,"):
            parts = text.split(",")[1:]
            if len(parts) >= 7 and parts[2] == "1":
                serving = parts
            continue
        if text.startswith("NUESTATS:RADIO,"):
            text = text[len("NUESTATS:RADIO,") :]
        label, sep, rest = text.partition(":")
        if sep:
            fields[label.strip().upper()] = rest.strip()
    figures: dict[str, float | int | None] = {
        "rsrp": _centi(fields.get("SIGNAL POWER", "")),
        "rssi": _centi(fields.get("TOTAL POWER", "")),
        "tx_power": _centi(fields.get("TX POWER", "")),
        "rsrq": _centi(fields.get("RSRQ", "")),
        "snr": _centi(fields.get("SNR", "")),
        "ecl": _ecl(fields.get("ECL", "")),
        "cell_id": _int(fields.get("CELL ID", "")),
        "pci": _int(fields.get("PCI", "")),
        "earfcn": _int(fields.get("EARFCN", "")),
        "band": _int(fields.get("CURRENT BAND", "")),
    }
    if serving is not None:
        earfcn, pci, _, rsrp, rsrq, rssi, snr = serving[:7]
        for name, value in (
            ("earfcn", _int(earfcn)),
            ("pci", _int(pci)),
            ("rsrp", _centi(rsrp)),
            ("rsrq", _centi(rsrq)),
            ("rssi", _centi(rssi)),
            ("snr", _centi(snr)),
        ):
            if figures[name] is None:
                figures[name] = value
    return RadioFigures(**figures)  # type: ignore[arg-type]


def _after_colon(lines: Iterable[str], prefix: str) -> list[str] | None:
    for line in lines:
        if line.startswith(prefix):
            return split_fields(line.partition(":")[2])
    return None


def _serving_cell(f: list[str], tx_power: Callable[[str], float | None]) -> RadioFigures:
    """The engineering-mode fields from ``earfcn`` on, laid out alike by ``+CENG`` and
    ``+QENG``: ``earfcn,offset,pci,"cellid",rsrp,rsrq,rssi,snr,band,"tac",ecl[,tx]``."""
    return RadioFigures(
        earfcn=_int(f[0]),
        pci=_int(f[2]),
        cell_id=_int(f[3], 16),
        rsrp=_plain(f[4]),
        rsrq=_plain(f[5]),
        rssi=_plain(f[6]),
        snr=_plain(f[7]),
        band=_int(f[8]),
        tac=_int(f[9], 16),
        ecl=_ecl(f[10]),
        tx_power=tx_power(f[11]) if len(f) > 11 else None,
    )


def parse_qeng(lines: Iterable[str]) -> RadioFigures:
    """BC66 ``+QENG: 0,earfcn,offset,pci,"cellid",rsrp,rsrq,rssi,sinr,band,"tac",ecl,tx,mode``:
    whole dBm/dB, tx power empty or 128/-128 when unknown, ECL 255 unknown."""
    f = _after_colon(lines, "+QENG")
    if f is None or len(f) < 12 or f[0] != "0":
        return RadioFigures()
    return _serving_cell(f[1:], _dbm)


def parse_ceng(lines: Iterable[str]) -> RadioFigures:
    """SIM7020 ``+CENG: earfcn,offset,pci,"cellid",rsrp,rsrq,rssi,snr,band,"tac",ecl,tx,…``:
    dBm/dB, tx power in centi-dBm."""
    f = _after_colon(lines, "+CENG")
    if f is None or len(f) < 11:
        return RadioFigures()
    return _serving_cell(f, _hundredths)


RADIO_PARSERS = {"nuestats": parse_nuestats, "ceng": parse_ceng, "qeng": parse_qeng}


def parse_radio(parser: str, lines: Iterable[str]) -> RadioFigures:
    return RADIO_PARSERS[parser](list(lines))


# --------------------------------------------------------------------------- PSM / eDRX

#: unit bits -> seconds per step (None: deactivated)
T3412_UNITS: Mapping[int, int | None] = {
    0b000: 600,
    0b001: 3600,
    0b010: 36000,
    0b011: 2,
    0b100: 30,
    0b101: 60,
    0b110: 1152000,
    0b111: None,
}
T3324_UNITS: Mapping[int, int | None] = {0b000: 2, 0b001: 60, 0b010: 360, 0b111: None}

#: eDRX cycle code (NB-S1) -> seconds
EDRX_CYCLES: Mapping[str, float] = {
    "0010": 20.48,
    "0011": 40.96,
    "0101": 81.92,
    "1001": 163.84,
    "1010": 327.68,
    "1011": 655.36,
    "1100": 1310.72,
    "1101": 2621.44,
    "1110": 5242.88,
    "1111": 10485.76,
}


def _encode(seconds: float | None, units: Mapping[int, int | None]) -> str:
    if seconds is None:
        return "111" + "00000"
    if seconds < 0:
        raise ValueError("a timer cannot be negative")
    candidates: list[tuple[float, int, int, int]] = []
    for bits, step in units.items():
        if step is None:
            continue
        value = min(31, max(0, round(seconds / step)))
        # the smallest error wins; on a tie the coarser unit
        candidates.append((abs(value * step - seconds), -step, bits, value))
    _, _, bits, value = min(candidates)
    return f"{bits:03b}{value:05b}"


def encode_t3412(seconds: float | None) -> str:
    """Periodic TAU (T3412 extended) as the 8-bit string of ``AT+CPSMS``; nearest value."""
    return _encode(seconds, T3412_UNITS)


def encode_t3324(seconds: float | None) -> str:
    """Active time (T3324) as the 8-bit string of ``AT+CPSMS``; nearest value."""
    return _encode(seconds, T3324_UNITS)


def decode_timer(bits: str, t3324: bool = False) -> float | None:
    """Seconds an 8-bit timer string stands for; ``None`` when deactivated."""
    if len(bits) != 8 or set(bits) - {"0", "1"}:
        raise ValueError(f"not an 8-bit timer: {bits!r}")
    units = T3324_UNITS if t3324 else T3412_UNITS
    unit = int(bits[:3], 2)
    if unit not in units:
        raise ValueError(f"unit {bits[:3]} is not defined for this timer")
    step = units[unit]
    return None if step is None else step * int(bits[3:], 2)


def edrx_code(seconds: float) -> str:
    """The eDRX cycle code nearest to ``seconds`` (NB-S1 table)."""
    return min(EDRX_CYCLES, key=lambda code: abs(EDRX_CYCLES[code] - seconds))
