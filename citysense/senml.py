"""SenML codec (RFC 8428) for JSON (Content-Format 110) and CBOR (112). Pure, no I/O.

:func:`decode_senml` turns a payload into *resolved* records (base fields applied, times
absolute in seconds) under strict limits; every malformed or oversized input raises
:class:`~citysense.errors.SenmlError` -- never another exception type, never a
RecursionError: the CBOR reader is iterative and accepts only SenML's shape (an array of
maps of scalars), and JSON nesting is bounded before it is parsed.

:func:`to_samples` groups resolved records by device and time, which is how the gateway
turns an uplink into readings. :func:`encode_senml` writes packs (used by simulators and
the downlink path).
"""

from __future__ import annotations

import base64
import json
import math
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import cbor2

from citysense.bytecursor import ByteCursor
from citysense.errors import SenmlError
from citysense.strictjson import reject_constant

CF_SENML_JSON = 110
CF_SENML_CBOR = 112

#: Resolved times below 2**28 are relative to now (RFC 8428 section 4.5.3).
RELATIVE_TIME_LIMIT = 2**28

#: CBOR labels of the SenML fields (RFC 8428 section 6).
CBOR_LABELS: Mapping[int, str] = {
    -1: "bver",
    -2: "bn",
    -3: "bt",
    -4: "bu",
    -5: "bv",
    -6: "bs",
    0: "n",
    1: "u",
    2: "v",
    3: "vs",
    4: "vb",
    5: "s",
    6: "t",
    7: "ut",
    8: "vd",
}
_JSON_TO_CBOR = {name: label for label, name in CBOR_LABELS.items()}

_NUMBER_FIELDS = frozenset({"bt", "bv", "bs", "v", "s", "t", "ut"})
_STRING_FIELDS = frozenset({"bn", "bu", "n", "u", "vs", "vd"})
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9:./_-]*")

Scalar = float | bool | str | bytes


@dataclass(frozen=True, slots=True)
class SenmlLimits:
    """Hard limits applied while decoding; anything beyond them is a :class:`SenmlError`."""

    max_bytes: int = 65536
    max_records: int = 512
    max_string: int = 256  #: names and units
    max_value_string: int = 1024  #: ``vs`` and ``vd``


DEFAULT_LIMITS = SenmlLimits()


@dataclass(frozen=True, slots=True)
class SenmlRecord:
    """A resolved record: full name, absolute time (s), one value, optional unit and sum."""

    name: str
    time: float
    value: Scalar | None
    unit: str | None = None
    sum: float | None = None


# --------------------------------------------------------------------------- decoding


def decode_senml(
    payload: bytes,
    content_format: int,
    now: float,
    limits: SenmlLimits = DEFAULT_LIMITS,
) -> list[SenmlRecord]:
    """Decode and resolve a SenML pack; ``now`` (Unix seconds) anchors relative times."""
    if len(payload) > limits.max_bytes:
        raise SenmlError(f"payload of {len(payload)} bytes exceeds {limits.max_bytes}", "too_large")
    if content_format == CF_SENML_JSON:
        raw = _read_json(payload, limits)
    elif content_format == CF_SENML_CBOR:
        raw = _read_cbor(payload, limits)
    else:
        raise SenmlError(f"unsupported content format {content_format}", "unsupported_format")
    return resolve(raw, now, limits)


# ---------------------------------------------------------------------------- fast path

_FAST_KEYS = frozenset({"bn", "bt", "bu", "n", "u", "v", "vb", "t"})
# one decoder for every call: json.loads with options builds a new one each time
_plain_decoder = json.JSONDecoder(object_pairs_hook=list, parse_constant=reject_constant)


def fast_json_records(
    payload: bytes, now: float, limits: SenmlLimits = DEFAULT_LIMITS
) -> list[SenmlRecord] | None:
    """The records of a plain SenML JSON pack, or ``None`` to let :func:`decode_senml` decide.

    The uplinks devices send are plain packs: base name and time, names, numbers or booleans,
    units. For those this returns exactly what :func:`citysense.senml.decode_senml` returns
    (a test holds the two side by side), at a fraction of the cost: JSON is parsed by the C
    decoder and only the fields a plain pack uses are resolved. Anything else -- another
    field, a wrong type, a duplicate key, NaN, a bad name, too many records -- returns
    ``None``, and the full decoder accepts it or explains the refusal.
    """
    try:
        data = _plain_decoder.decode(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    if type(data) is not list or len(data) > limits.max_records:
        return None
    bn, bu, bt = "", None, 0.0
    out: list[SenmlRecord] = []
    for pairs in data:
        if type(pairs) is not list:
            return None
        rec: dict[str, object] = {}
        for pair in pairs:
            if type(pair) is not tuple or pair[0] in rec or pair[0] not in _FAST_KEYS:
                return None
            rec[pair[0]] = pair[1]
        for key in ("bn", "bu", "n", "u"):
            text = rec.get(key)
            if key in rec and (type(text) is not str or len(text) > limits.max_string):
                return None
        for key in ("bt", "t", "v"):
            number = rec.get(key)
            if key in rec and (type(number) not in (int, float) or not math.isfinite(number)):  # type: ignore[arg-type]
                return None
        if "bn" in rec:
            bn = rec["bn"]  # type: ignore[assignment]
        if "bu" in rec:
            bu = rec["bu"]
        if "bt" in rec:
            bt = float(rec["bt"])  # type: ignore[arg-type]
        name = bn + (rec.get("n") or "")  # type: ignore[operator]
        if not name or len(name) > limits.max_string or not _NAME_RE.fullmatch(name):
            return None
        time = bt + float(rec.get("t") or 0.0)  # type: ignore[arg-type]
        if time < RELATIVE_TIME_LIMIT:
            time += now
        value: float | bool
        if "v" in rec and "vb" not in rec:
            value = 0.0 + float(rec["v"])  # type: ignore[arg-type]
        elif "vb" in rec and "v" not in rec and type(rec["vb"]) is bool:
            value = bool(rec["vb"])
        else:
            return None
        out.append(SenmlRecord(name, time, value, rec.get("u") or bu))  # type: ignore[arg-type]
    return out


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise SenmlError(f"duplicate field {key!r}", "malformed")
        out[key] = value
    return out


def _read_json(payload: bytes, limits: SenmlLimits) -> list[dict[str, object]]:
    # SenML JSON is an array of flat objects: any deeper nesting is refused before parsing,
    # which keeps the parser far from the interpreter's recursion limit.
    depth = 0
    in_string = escaped = False
    for byte in payload:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > 2:
                raise SenmlError("SenML JSON nests deeper than an array of objects", "malformed")
        elif byte in (0x5D, 0x7D):
            depth -= 1
    try:
        text = payload.decode("utf-8")
        data = json.loads(text, object_pairs_hook=_unique_pairs, parse_constant=reject_constant)
    except SenmlError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SenmlError(f"not valid JSON: {exc}", "malformed") from exc
    if not isinstance(data, list):
        raise SenmlError("a SenML pack is a JSON array", "malformed")
    if len(data) > limits.max_records:
        raise SenmlError(f"{len(data)} records exceed {limits.max_records}", "too_many_records")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise SenmlError(f"record {i} is not an object", "malformed")
    return data


class _CborReader(ByteCursor):
    """An iterative reader for SenML's CBOR shape: array of maps of scalars."""

    __slots__ = ()

    def short(self) -> Exception:
        return SenmlError("truncated CBOR", "malformed")

    def head(self) -> tuple[int, int, int | None]:
        """(major type, additional info, argument); argument ``None`` means indefinite."""
        initial = self.take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            return major, info, info
        if info == 24:
            return major, info, self.take(1)[0]
        if info == 25:
            return major, info, int.from_bytes(self.take(2), "big")
        if info == 26:
            return major, info, int.from_bytes(self.take(4), "big")
        if info == 27:
            return major, info, int.from_bytes(self.take(8), "big")
        if info == 31 and major in (2, 3, 4, 5, 7):
            return major, info, None
        raise SenmlError(f"invalid CBOR additional information {info}", "malformed")

    def at_break(self) -> bool:
        if self.at_end():
            raise SenmlError("indefinite-length CBOR item without a break", "malformed")
        if self.data[self.pos] == 0xFF:
            self.pos += 1
            return True
        return False

    def scalar(self, limits: SenmlLimits) -> Scalar | int:
        major, info, arg = self.head()
        if major == 0:
            assert arg is not None
            return arg
        if major == 1:
            assert arg is not None
            return -1 - arg
        if major in (2, 3):
            if arg is None:
                raise SenmlError("indefinite-length CBOR strings are not supported", "malformed")
            if arg > limits.max_value_string:
                raise SenmlError(f"CBOR string of {arg} bytes is too long", "too_large")
            raw = self.take(arg)
            if major == 2:
                return raw
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SenmlError("CBOR text is not UTF-8", "malformed") from exc
        if major == 7:
            if info == 20:
                return False
            if info == 21:
                return True
            if info == 25:
                return float(struct.unpack(">e", (arg or 0).to_bytes(2, "big"))[0])
            if info == 26:
                return float(struct.unpack(">f", (arg or 0).to_bytes(4, "big"))[0])
            if info == 27:
                return float(struct.unpack(">d", (arg or 0).to_bytes(8, "big"))[0])
            raise SenmlError(f"CBOR simple value {info} is not allowed in SenML", "malformed")
        if major in (4, 5):
            raise SenmlError("SenML CBOR nests deeper than an array of maps", "malformed")
        raise SenmlError("CBOR tags are not allowed in SenML", "malformed")


def _read_cbor(payload: bytes, limits: SenmlLimits) -> list[dict[str, object]]:
    reader = _CborReader(payload)
    major, _, count = reader.head()
    if major != 4:
        raise SenmlError("a SenML pack is a CBOR array", "malformed")
    records: list[dict[str, object]] = []
    while count is None or len(records) < count:
        if count is None and reader.at_break():
            break
        if len(records) >= limits.max_records:
            raise SenmlError(f"more than {limits.max_records} records", "too_many_records")
        m_major, _, pairs = reader.head()
        if m_major != 5:
            raise SenmlError(f"record {len(records)} is not a CBOR map", "malformed")
        rec: dict[str, object] = {}
        n = 0
        while pairs is None or n < pairs:
            if pairs is None and reader.at_break():
                break
            key = reader.scalar(limits)
            value = reader.scalar(limits)
            if isinstance(key, bool) or not isinstance(key, int | str):
                raise SenmlError("CBOR map keys must be labels", "malformed")
            name = CBOR_LABELS.get(key, str(key)) if isinstance(key, int) else key
            if name in rec:
                raise SenmlError(f"duplicate field {name!r}", "malformed")
            rec[name] = value
            n += 1
            if n > 64:
                raise SenmlError("too many fields in a record", "malformed")
        records.append(rec)
    if reader.pos != len(payload):
        raise SenmlError("trailing bytes after the SenML pack", "malformed")
    return records


def _number(rec: Mapping[str, object], key: str, i: int) -> float | None:
    value = rec.get(key)
    if value is None:
        return None
    if type(value) is bool or not isinstance(value, int | float):
        raise SenmlError(f"record {i}: {key} must be a number", "malformed")
    try:
        f = float(value)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f):
        raise SenmlError(f"record {i}: {key} is not finite", "not_finite")
    return f


def _string(rec: Mapping[str, object], key: str, i: int, limit: int) -> str | None:
    value = rec.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise SenmlError(f"record {i}: {key} must be a string", "malformed")
    if len(value) > limit:
        raise SenmlError(f"record {i}: {key} longer than {limit} characters", "too_large")
    return value


def resolve(
    raw: Iterable[Mapping[str, object]], now: float, limits: SenmlLimits = DEFAULT_LIMITS
) -> list[SenmlRecord]:
    """Apply base fields and relative times (RFC 8428 section 4.6) to raw records."""
    bn, bu = "", None
    bt = bv = bs = 0.0
    out: list[SenmlRecord] = []
    for i, rec in enumerate(raw):
        for key in rec:
            if key.endswith("_"):
                raise SenmlError(f"record {i}: must-understand field {key!r}", "malformed")
        bver = rec.get("bver")
        if bver is not None and (type(bver) is not int or bver < 1 or bver > 64):
            raise SenmlError(f"record {i}: bver must be a positive integer", "malformed")
        if (b := _string(rec, "bn", i, limits.max_string)) is not None:
            bn = b
        if (b := _string(rec, "bu", i, limits.max_string)) is not None:
            bu = b
        bt = v if (v := _number(rec, "bt", i)) is not None else bt
        bv = v if (v := _number(rec, "bv", i)) is not None else bv
        bs = v if (v := _number(rec, "bs", i)) is not None else bs
        n = _string(rec, "n", i, limits.max_string) or ""
        name = bn + n
        if not name or len(name) > limits.max_string or not _NAME_RE.fullmatch(name):
            raise SenmlError(f"record {i}: invalid name {name!r}", "bad_name")
        t = _number(rec, "t", i) or 0.0
        time = bt + t
        if time < RELATIVE_TIME_LIMIT:
            time += now
        unit = _string(rec, "u", i, limits.max_string) or bu
        value = _value(rec, i, bv, limits)
        s = _number(rec, "s", i)
        total = bs + s if s is not None else None
        if value is None and total is None:
            if "bv" in rec or bv:
                value = bv
            else:
                raise SenmlError(f"record {i}: no value", "malformed")
        out.append(SenmlRecord(name, time, value, unit, total))
    return out


def _value(rec: Mapping[str, object], i: int, bv: float, limits: SenmlLimits) -> Scalar | None:
    """A record's value (``v`` plus the base value, ``vb``, ``vs`` or ``vd``), or None."""
    present = [k for k in ("v", "vb", "vs", "vd") if k in rec]
    if len(present) > 1:
        raise SenmlError(f"record {i}: more than one value field", "malformed")
    if present == ["v"]:
        v = _number(rec, "v", i)
        assert v is not None
        return bv + v
    if present == ["vb"]:
        if type(rec["vb"]) is not bool:
            raise SenmlError(f"record {i}: vb must be a boolean", "malformed")
        return bool(rec["vb"])
    if present == ["vs"]:
        return _string(rec, "vs", i, limits.max_value_string)
    if present == ["vd"]:
        raw_vd = rec["vd"]
        if isinstance(raw_vd, bytes):
            return raw_vd
        text = _string(rec, "vd", i, limits.max_value_string) or ""
        try:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except ValueError as exc:
            raise SenmlError(f"record {i}: vd is not base64url", "malformed") from exc
    return None


# --------------------------------------------------------------------------- samples


def split_name(name: str) -> tuple[str, str]:
    """``urn:imei:4901...:pm25`` -> (``urn:imei:4901...``, ``pm25``)."""
    device, sep, metric = name.rpartition(":")
    if not sep or not device or not metric:
        raise SenmlError(f"name {name!r} is not <device>:<metric>", "bad_name")
    return device, metric


def to_samples(records: Iterable[SenmlRecord]) -> dict[tuple[str, int], dict[str, Scalar]]:
    """Group resolved records into ``{(device, t_ms): {metric: value}}``.

    A metric given twice for the same device and time is refused: the pack is ambiguous.
    """
    out: dict[tuple[str, int], dict[str, Scalar]] = {}
    for rec in records:
        device, metric = split_name(rec.name)
        if rec.value is None:
            raise SenmlError(f"{rec.name}: sum-only records are not readings", "malformed")
        key = (device, round(rec.time * 1000))
        values = out.setdefault(key, {})
        if metric in values:
            raise SenmlError(f"{rec.name} given twice for one time", "malformed")
        values[metric] = rec.value
    return out


# --------------------------------------------------------------------------- encoding


def encode_senml(records: Iterable[Mapping[str, object]], content_format: int) -> bytes:
    """Encode raw records (JSON field names) as SenML JSON or CBOR."""
    pack = list(records)
    if content_format == CF_SENML_JSON:
        return json.dumps(pack, separators=(",", ":"), allow_nan=False).encode()
    if content_format == CF_SENML_CBOR:
        return cbor2.dumps([{_JSON_TO_CBOR[k]: v for k, v in rec.items()} for rec in pack])
    raise SenmlError(f"unsupported content format {content_format}", "unsupported_format")


def encode_values(
    device: str,
    t_ms: int,
    values: Mapping[str, float | bool],
    content_format: int,
    units: Mapping[str, str | None] | None = None,
) -> bytes:
    """One device's values at one time as a pack with base name and base time."""
    records: list[dict[str, object]] = []
    for i, (metric, value) in enumerate(values.items()):
        rec: dict[str, object] = {}
        if i == 0:
            rec["bn"] = f"{device}:"
            rec["bt"] = t_ms / 1000
        rec["n"] = metric
        unit = units.get(metric) if units else None
        if unit:
            rec["u"] = unit
        rec["vb" if isinstance(value, bool) else "v"] = value
        records.append(rec)
    return encode_senml(records, content_format)
