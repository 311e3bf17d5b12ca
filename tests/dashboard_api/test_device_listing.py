"""``/devices``' per-request part (age, status, order, counts, flags) computed over arrays:
the same answer, device by device, as :func:`analytics.status.device_status` gives."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.status import device_status
from citysense.registry import Device
from dashboard_api.parameters import rfc3339
from dashboard_api.quality import Flag
from dashboard_api.routes_devices import _listed_json, _listing
from timeseries.query import LatestValue

KINDS = ("air_station", "traffic_counter", "water_meter", "gas_meter", "unknown_kind")
NOW = 1_780_000_000_123


@settings(max_examples=60, deadline=None)
@given(
    ages=st.lists(
        st.tuples(st.sampled_from(KINDS), st.integers(-300_000, 3 * 86_400_000)), max_size=30
    ),
    status=st.sampled_from([None, "online", "stale", "offline"]),
    flagged=st.sets(st.integers(0, 31), max_size=3),
)
def test_listing_matches_device_status(
    ages: list[tuple[str, int]], status: str | None, flagged: set[int]
) -> None:
    rows = [
        LatestValue(f"d{i:02d}", kind, "erqi", "s1", "battery", NOW - age, 80.0)
        for i, (kind, age) in enumerate(ages)
    ]
    # two registered devices never seen: offline, no age
    registry = {
        f"r{i}": Device(f"r{i}", "water_meter", "erqi", "s2", 34.7, 113.6, "gw") for i in (0, 1)
    }
    flags = {
        f"d{i:02d}": [Flag(f"d{i:02d}", "", "erqi", "s1", "battery", "stuck", NOW - 60_000, None)]
        for i in flagged
        if i < len(ages)
    }
    body, counts = _listed_json(_listing(registry, None, None)(rows), NOW, status, flags)
    got = orjson.loads(b"[" + body + b"]")
    expected = []
    for dev_id in sorted({r.device for r in rows} | registry.keys()):
        row = next((r for r in rows if r.device == dev_id), None)
        last = row.t if row else None
        st_ = device_status(row.kind if row else "water_meter", last, NOW)
        if status is None or st_ == status:
            age = None if last is None else (NOW - last) / 1000
            expected.append((dev_id, st_, age, len(flags.get(dev_id, []))))
    order = {"offline": 0, "stale": 1, "online": 2}
    expected.sort(key=lambda e: order[e[1]])
    assert [(d["device"], d["status"], d["age_s"], len(d["flags"])) for d in got] == expected
    for d in got:
        if d["flags"]:
            assert d["flags"] == [
                {"metric": "battery", "reason": "stuck", "since": rfc3339(NOW - 60_000)}
            ]
    assert counts == {s: sum(e[1] == s for e in expected) for s in order}


def test_a_reused_listing_shows_each_flag_tables_flags() -> None:
    """The flags' JSON is rendered once per flag table and reused: a new table (the next
    quality evaluation) is shown on the same listing, and the old one is not kept."""
    rows = [
        LatestValue(f"d{i}", "air_station", "erqi", "s1", "pm25", NOW - 1000, 9.0) for i in (0, 1)
    ]
    listing = _listing({}, None, None)(rows)

    def flag(dev: str, reason: str) -> dict[str, list[Flag]]:
        return {dev: [Flag(dev, "", "erqi", "s1", "pm25", reason, NOW - 60_000, None)]}

    def shown(flags: dict[str, list[Flag]]) -> list[list[str]]:
        body, _ = _listed_json(listing, NOW, None, flags)
        return [[f["reason"] for f in d["flags"]] for d in orjson.loads(b"[" + body + b"]")]

    first = flag("d0", "stuck")
    assert shown(first) == [["stuck"], []]
    assert shown(first) == [["stuck"], []]  # reused
    assert shown(flag("d1", "spike")) == [[], ["spike"]]  # the next evaluation's table
    assert shown(flag("d0", "drift")) == [["drift"], []]  # equal in shape, not the same table
    assert shown({}) == [[], []]
    assert len(listing.flagged) == 1
