"""The binding and flood policy, pure: every verdict of edge.devicetrust and the token
buckets of edge.ratelimit, with the clock in the test's hands."""

from __future__ import annotations

from pathlib import Path

import pytest

from citysense.credentials import DTLS_PSK, OSCORE, DeviceKey
from citysense.registry import Device, Registry
from edge.devicekeys import DeviceClaim, DeviceKeyStore
from edge.devicetrust import DeviceTrust
from edge.ratelimit import TokenBuckets

A, B, C, FAR = "urn:imei:1", "urn:imei:2", "urn:imei:3", "urn:imei:4"


@pytest.fixture
def registry() -> Registry:
    return Registry(
        [
            Device(A, "air_station", "d", "s", 0, 0, "gw-1"),
            Device(B, "air_station", "d", "s", 0, 0, "gw-1"),
            Device(C, "water_meter", "d", "s", 0, 0, "gw-1"),
            Device(FAR, "air_station", "d", "s", 0, 0, "gw-2"),
        ]
    )


def store(tmp_path: Path) -> DeviceKeyStore:
    return DeviceKeyStore(
        [
            DeviceKey(A, OSCORE, b"\x01", bytes(16)),
            DeviceKey(B, DTLS_PSK, b"b", bytes(16)),
            DeviceKey(FAR, OSCORE, b"\x04", bytes(16)),
        ],
        tmp_path,
    )


def code(verdict: object) -> str | None:
    return None if verdict is None else verdict.code  # type: ignore[attr-defined]


def test_binding(registry: Registry, tmp_path: Path) -> None:
    trust = DeviceTrust(registry, "gw-1", store(tmp_path), device_rate=0)
    a = DeviceClaim(A, OSCORE)
    assert code(trust.check(a, {A}, 0)) is None
    assert code(trust.check(a, {B}, 0)) == "4.03"
    assert code(trust.check(a, {A, B}, 0)) == "4.03"
    assert code(trust.check(None, {A}, 0)) == "4.01"
    assert code(trust.check(None, {C}, 0)) == "4.01"  # required: unkeyed refused too
    assert code(trust.check(DeviceClaim(FAR, OSCORE), {FAR}, 0)) == "4.03"
    roaming = DeviceTrust(registry, "gw-1", store(tmp_path), roaming=True, device_rate=0)
    assert code(roaming.check(DeviceClaim(FAR, OSCORE), {FAR}, 0)) is None
    optional = DeviceTrust(registry, "gw-1", store(tmp_path), required=False, device_rate=0)
    assert code(optional.check(None, {C}, 0)) is None
    assert code(optional.check(None, {A}, 0)) == "4.01"
    assert trust.may_deliver(a, A) and not trust.may_deliver(a, B)
    assert not trust.may_deliver(None, C)
    assert DeviceTrust(registry, "gw-1", None).may_deliver(None, A)


def test_without_keys_still_one_device_per_uplink_and_its_gateway(registry: Registry) -> None:
    trust = DeviceTrust(registry, "gw-1", None, device_rate=0)
    assert code(trust.check(None, {A}, 0)) is None
    assert code(trust.check(None, {A, B}, 0)) == "4.03"
    assert code(trust.check(None, {FAR}, 0)) == "4.03"


def test_per_device_budget_follows_the_catalog(registry: Registry) -> None:
    trust = DeviceTrust(registry, "gw-1", None, device_rate=4, device_burst=10)
    codes = [code(trust.check(None, {A}, 0.0)) for _ in range(12)]
    assert codes == [None] * 10 + ["4.29", "4.29"]
    limited = trust.check(None, {A}, 0.0)
    assert limited is not None and limited.max_age is not None and limited.max_age >= 1
    assert code(trust.check(None, {B}, 0.0)) is None  # another device is unaffected
    # air stations report every 300 s: 4 per interval is one token per 75 s
    assert code(trust.check(None, {A}, 76.0)) is None
    assert code(trust.check(None, {A}, 76.5)) == "4.29"


def test_source_limit_only_for_unauthenticated(registry: Registry, tmp_path: Path) -> None:
    class Remote:
        sockaddr = ("192.0.2.7", 40000)

    trust = DeviceTrust(registry, "gw-1", store(tmp_path), source_rate=5)
    verdicts = [trust.check_source(None, Remote(), 0.0) for _ in range(12)]
    assert [code(v) for v in verdicts].count("4.29") == 2  # burst of 2 x 5
    assert trust.check_source(DeviceClaim(A, OSCORE), Remote(), 0.0) is None
    assert DeviceTrust(registry, "gw-1", None).check_source(None, Remote(), 0.0) is None


def test_buckets_stay_bounded() -> None:
    buckets = TokenBuckets(max_keys=1000)
    for i in range(10_000):
        buckets.take(f"k{i}", 1.0, 2.0, i * 0.001)
    assert len(buckets) <= 1000
    assert buckets.take("x", 0.0, 1.0, 0.0) == 0  # rate 0: no limit
