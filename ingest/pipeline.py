"""The ingest pipeline: one MQTT message in, points and dead letters out (pure).

:func:`process_message` decodes the envelope once, checks that its ``gateway`` is the one in
the topic, validates every reading against the catalog and maps the valid ones to points
(INTERFACES.md section 6). Nothing is dropped: a message yields points for its valid readings
and one :class:`DeadLetter` (reason, message, raw payload) for the envelope or for each
invalid reading. The caller passes ``now`` (epoch ms).

:class:`SeqTracker` follows each gateway's ``seq``: gaps and repeats are counted, and a batch
re-sent byte for byte after it was stored is recognised so that its re-write can be skipped.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field

from citysense.catalog import (
    DEFAULT_MAX_AGE_MS,
    KINDS,
    MAX_FUTURE_SKEW_MS,
    METRICS,
    metrics_of_kind,
)
from citysense.envelope import MAX_ENVELOPE_BYTES, MAX_READINGS, decode_batch, reading_to_dict
from citysense.errors import EnvelopeError
from citysense.model import (
    DEVICE_ID_RE,
    ENVELOPE_VERSION,
    GATEWAY_ID_RE,
    PLACE_ID_RE,
    Batch,
)
from citysense.strictjson import DECODER
from citysense.topics import gateway_of_topic
from citysense.validation import validate_reading
from timeseries.schema import Point, reading_to_points

try:  # an accelerator for the fast path; the stdlib decoder is the reference
    import orjson
except ImportError:  # pragma: no cover - a dependency; the fast path works without it
    orjson = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Input that cannot be stored, kept with its raw payload and why."""

    reason: str
    message: str
    topic: str
    payload: bytes
    gateway: str | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class Processed:
    """What one message became. ``seq`` is set when the batch is to be confirmed."""

    topic_gateway: str | None
    seq: int | None
    points: list[Point] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    readings: int = 0  #: valid readings mapped to points


def _reading_payload(batch: Batch, index: int) -> bytes:
    body = {
        "gateway": batch.gateway,
        "seq": batch.seq,
        "index": index,
        "reading": reading_to_dict(batch.readings[index]),
    }
    return json.dumps(body, separators=(",", ":"), default=str).encode()


def _salvage_seq(payload: bytes, gateway: str) -> int | None:
    """The ``seq`` of an envelope that failed decoding, when it plainly has one of this gateway.

    Such a batch is dead-lettered whole; confirming it stops its gateway re-sending it every
    re-send interval (INTERFACES.md section 5: confirmed means stored or dead-lettered).
    """
    if len(payload) > MAX_ENVELOPE_BYTES:
        return None
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("gateway") != gateway:
        return None
    seq = data.get("seq")
    return seq if type(seq) is int and seq >= 1 else None


def process_message(
    topic: str, payload: bytes, now_ms: int, max_age_ms: int = DEFAULT_MAX_AGE_MS
) -> Processed:
    """Decode, check and map one ``citysense/v1/{gateway}/up`` message; never raises."""
    try:
        return _process(topic, payload, now_ms, max_age_ms)
    except Exception as exc:  # bad input must never stop the ingestor: keep it, with why
        letter = DeadLetter("invalid", f"cannot process: {exc!r}"[:500], topic, payload)
        return Processed(gateway_of_topic(topic), None, dead=[letter])


def _process(topic: str, payload: bytes, now_ms: int, max_age_ms: int) -> Processed:
    gateway = gateway_of_topic(topic)
    if gateway is None:
        return Processed(
            None,
            None,
            dead=[DeadLetter("bad_topic", f"unexpected topic {topic!r}", topic, payload)],
        )
    try:
        batch = decode_batch(payload)
    except EnvelopeError as exc:
        seq = _salvage_seq(payload, gateway)
        letter = DeadLetter(exc.reason, str(exc), topic, payload, gateway, seq)
        return Processed(gateway, seq, dead=[letter])
    if batch.gateway != gateway:
        letter = DeadLetter(
            "gateway_mismatch",
            f"envelope of gateway {batch.gateway!r} published on the topic of {gateway!r}",
            topic,
            payload,
            gateway,
            batch.seq,
        )
        # Not confirmed: a confirmation on either gateway's topic could clear an unrelated batch.
        return Processed(gateway, None, dead=[letter])
    points: list[Point] = []
    dead: list[DeadLetter] = []
    valid = 0
    for index, reading in enumerate(batch.readings):
        problems = validate_reading(reading, now_ms, max_age_ms)
        if problems:
            dead.append(
                DeadLetter(
                    problems[0].reason,
                    "; ".join(p.message for p in problems),
                    topic,
                    _reading_payload(batch, index),
                    gateway,
                    batch.seq,
                )
            )
            continue
        points.extend(reading_to_points(reading, gateway))
        valid += 1
    return Processed(gateway, batch.seq, points, dead, valid)


class SeqTracker:
    """Per-gateway ``seq`` bookkeeping: gaps, repeats, and batches already stored.

    ``seen`` remembers the payload digest of recently stored batches per (gateway, seq),
    bounded to ``capacity`` entries; a re-sent identical batch is a repeat whose write can
    be skipped. A different payload under a known ``seq`` (a gateway whose state was reset)
    is written again: only an identical payload is proof that its points are stored.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._stored: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._highest: dict[str, int] = {}
        self.gaps = 0
        self.repeats = 0

    def observe(self, gateway: str, seq: int, digest: int) -> bool:
        """Count ``seq``; ``True`` when this exact batch is known to be stored already."""
        highest = self._highest.get(gateway)
        if highest is None:
            self._highest[gateway] = seq
        elif seq > highest:
            self.gaps += seq - highest - 1
            self._highest[gateway] = seq
        known = self._stored.get((gateway, seq))
        if known is not None or (highest is not None and seq == highest):
            self.repeats += 1
        return known == digest

    def stored(self, gateway: str, seq: int, digest: int) -> None:
        """Remember that this batch is in storage."""
        key = (gateway, seq)
        self._stored[key] = digest
        self._stored.move_to_end(key)
        while len(self._stored) > self._capacity:
            self._stored.popitem(last=False)


_DECODE = DECODER.decode


def _loads(payload: bytes) -> object:
    """The envelope as the stdlib decoder (``parse_constant`` rejecting NaN/Infinity) reads
    it, or an error. orjson reads strict RFC 8259 JSON; whatever it refuses (NaN, Infinity,
    1e400, lone surrogates, bad UTF-8, deep nesting) goes to the stdlib decoder, so every
    envelope decodes or fails exactly as before. One difference remains by design: orjson
    reads an integer beyond 64 bits as a float, which the fast path then declines (``seq``,
    ``sent`` and ``t`` must be ints; every metric's range is far inside 64 bits, checked
    below) -- the general path decides those, as it did.
    """
    if orjson is not None:
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError:
            pass
    return _DECODE(payload.decode())


#: metric -> (domain, is_bool, lo, hi, integer, "name="), for the fast path.
_SPECS: dict[str, tuple[str, bool, float, float, bool, str]] = {
    name: (
        m.domain,
        m.type == "bool",
        m.lo if m.lo is not None else 0.0,
        m.hi if m.hi is not None else 0.0,
        m.integer,
        f"{name}=",
    )
    for name, m in METRICS.items()
}
#: kind -> {metric: spec} of the metrics that kind may report.
_KIND_SPECS: dict[str, dict[str, tuple[str, bool, float, float, bool, str]]] = {
    kind: {name: _SPECS[name] for name in metrics_of_kind(kind)} for kind in KINDS
}
_ID_CACHE_LIMIT = 1_000_000
# orjson reads integers beyond 64 bits as floats: they must fall outside every metric's range.
if any(abs(spec[2]) >= 2**63 or abs(spec[3]) >= 2**63 for spec in _SPECS.values()):
    raise RuntimeError("a metric's range reaches 2**63: the fast path's decoder cannot tell")


class LineFastPath:
    """Envelope straight to line protocol, for messages in which everything is valid.

    Equivalent to :func:`process_message` followed by line serialisation, for every message it
    accepts; it declines (returns ``None``) at the first thing that is not plainly valid, and
    the caller then takes the general path, which names every problem. It accepts exactly the
    envelopes :func:`~citysense.envelope.decode_batch` and
    :func:`~citysense.validation.validate_reading` accept with no rejection. Caches: ids that
    already matched their pattern, and each series' escaped key (ids that match their
    patterns need no escaping). One decode per message.
    """

    def __init__(self, max_age_ms: int = DEFAULT_MAX_AGE_MS) -> None:
        self.max_age_ms = max_age_ms
        self._devices: set[str] = set()
        self._places: set[str] = set()
        self._gateways: set[str] = set()
        self._keys: dict[tuple[object, ...], str] = {}

    def _known(self, cache: set[str], value: object, pattern: re.Pattern[str]) -> bool:
        if type(value) is not str:
            return False
        if value in cache:
            return True
        if not pattern.fullmatch(value):
            return False
        if len(cache) >= _ID_CACHE_LIMIT:
            cache.clear()
        cache.add(value)
        return True

    def lines(
        self, topic_gateway: str, payload: bytes, now_ms: int
    ) -> tuple[int, int, list[str]] | None:
        """``(seq, readings, lines)`` of an all-valid message, else ``None``."""
        try:
            return self._lines(topic_gateway, payload, now_ms)
        except TypeError:  # an unhashable id or kind: not plainly valid
            return None

    def _lines(
        self, topic_gateway: str, payload: bytes, now_ms: int
    ) -> tuple[int, int, list[str]] | None:
        if len(payload) > MAX_ENVELOPE_BYTES:
            return None
        try:
            data = _loads(payload)
        except (ValueError, RecursionError):  # also UnicodeDecodeError: the general path decides
            return None
        if type(data) is not dict:
            return None
        v = data.get("v")
        seq = data.get("seq")
        sent = data.get("sent")
        readings = data.get("readings")
        gateway = data.get("gateway")
        if (
            type(v) is not int
            or v != ENVELOPE_VERSION
            or type(seq) is not int
            or seq < 1
            or type(sent) is not int
            or sent < 0
            or type(readings) is not list
            or len(readings) > MAX_READINGS
            or gateway != topic_gateway
            or not self._known(self._gateways, gateway, GATEWAY_ID_RE)
        ):
            return None
        lo_t = max(0, now_ms - self.max_age_ms)
        hi_t = now_ms + MAX_FUTURE_SKEW_MS
        devices, places, keys = self._devices, self._places, self._keys
        known = self._known
        out: list[str] = []
        append = out.append
        for r in readings:
            if type(r) is not dict:
                return None
            values = r.get("values")
            kind = r.get("kind")
            device = r.get("device")
            district = r.get("district")
            site = r.get("site")
            t = r.get("t")
            specs = _KIND_SPECS.get(kind) if type(kind) is str else None
            if (
                specs is None
                or type(values) is not dict
                or not values
                or type(t) is not int
                or not lo_t <= t <= hi_t
                or (device not in devices and not known(devices, device, DEVICE_ID_RE))
                or (district not in places and not known(places, district, PLACE_ID_RE))
                or (site not in places and not known(places, site, PLACE_ID_RE))
            ):
                return None
            by_domain: dict[str, list[str]] = {}
            for name, value in values.items():
                spec = specs.get(name)
                if spec is None:
                    return None
                domain, is_bool, lo, hi, integer, prefix = spec
                kind_of_value = type(value)
                if is_bool:
                    if kind_of_value is not bool:
                        return None
                    text = "true" if value else "false"
                else:
                    if kind_of_value is float:
                        # NaN fails both comparisons; +-Inf is outside every range
                        if not lo <= value <= hi or (integer and not value.is_integer()):
                            return None
                        text = repr(value)
                    elif kind_of_value is int:
                        if not lo <= value <= hi:
                            return None
                        text = repr(float(value))
                    else:
                        return None
                fields = by_domain.get(domain)
                if fields is None:
                    by_domain[domain] = [prefix + text]
                else:
                    fields.append(prefix + text)
            for domain, fields in by_domain.items():
                cache_key = (domain, device, kind, district, site, gateway)
                key = keys.get(cache_key)
                if key is None:
                    if len(keys) >= _ID_CACHE_LIMIT:
                        keys.clear()
                    key = keys[cache_key] = (
                        f"{domain},device={device},district={district},gateway={gateway},"
                        f"kind={kind},site={site}"
                    )
                append(f"{key} {','.join(fields)} {t}")
        return seq, len(readings), out
