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
from collections import OrderedDict
from dataclasses import dataclass, field

from citysense.catalog import (
    DEFAULT_MAX_AGE_MS,
)
from citysense.envelope import MAX_ENVELOPE_BYTES, decode_batch, reading_to_dict
from citysense.errors import EnvelopeError
from citysense.model import (
    Batch,
)
from citysense.topics import gateway_of_topic
from citysense.validation import validate_reading
from timeseries.schema import Point, reading_to_points


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

    def known(self, gateway: str, seq: int, digest: int) -> bool:
        """``True`` when this exact batch is already recorded as stored (counts nothing)."""
        return self._stored.get((gateway, seq)) == digest

    def stored(self, gateway: str, seq: int, digest: int) -> None:
        """Remember that this batch is in storage."""
        key = (gateway, seq)
        self._stored[key] = digest
        self._stored.move_to_end(key)
        while len(self._stored) > self._capacity:
            self._stored.popitem(last=False)
