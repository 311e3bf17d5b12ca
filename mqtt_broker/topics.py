"""Topic names, topic filters, shared subscriptions and matching."""

from __future__ import annotations

import logging

from mqtt_broker.constants import (
    TOPIC_FILTER_INVALID,
    TOPIC_NAME_INVALID,
    ProtocolError,
)

log = logging.getLogger("mqtt_broker")

# --------------------------------------------------------------------------- topics


def validate_topic_name(topic: str) -> None:
    if not topic:
        raise ProtocolError(TOPIC_NAME_INVALID, "empty topic name")
    if "+" in topic or "#" in topic:
        raise ProtocolError(TOPIC_NAME_INVALID, f"topic name {topic!r} contains a wildcard")


def validate_topic_filter(flt: str) -> None:
    if not flt:
        raise ProtocolError(TOPIC_FILTER_INVALID, "empty topic filter")
    levels = flt.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ProtocolError(TOPIC_FILTER_INVALID, f"bad '#' in topic filter {flt!r}")
        if "+" in level and level != "+":
            raise ProtocolError(TOPIC_FILTER_INVALID, f"bad '+' in topic filter {flt!r}")


def split_shared(flt: str) -> tuple[str | None, str]:
    """``$share/{group}/{filter}`` -> (group, filter); any other filter -> (None, filter)."""
    if not flt.startswith("$share/"):
        return None, flt
    parts = flt.split("/", 2)
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise ProtocolError(TOPIC_FILTER_INVALID, f"shared subscription {flt!r} is malformed")
    group = parts[1]
    if "+" in group or "#" in group:
        raise ProtocolError(TOPIC_FILTER_INVALID, f"share name {group!r} contains a wildcard")
    return group, parts[2]


def topic_matches(filter_levels: tuple[str, ...], topic_levels: list[str]) -> bool:
    """Whether a split topic filter matches a split topic name (MQTT 4.7)."""
    if topic_levels[0].startswith("$") and filter_levels[0] in ("+", "#"):
        return False
    n = len(topic_levels)
    for i, f in enumerate(filter_levels):
        if f == "#":
            return True
        if i >= n or (f != "+" and f != topic_levels[i]):
            return False
    return len(filter_levels) == n
