"""The simulated city: seeded fleet generation and ``citysense fleet generate``."""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

import pytest

from citysense.catalog import KINDS
from citysense.model import DEVICE_ID_RE
from citysense.registry import format_registry, load_registry, parse_registry
from simulators.city import (
    ZHENGZHOU,
    gateway_ids,
    generate_fleet,
    imei,
    kind_counts,
    luhn_check_digit,
    luhn_valid,
)

ROOT = Path(__file__).resolve().parents[2]


def test_luhn_matches_a_known_imei() -> None:
    assert luhn_check_digit("49015420323751") == 8
    assert luhn_valid("490154203237518")
    assert not luhn_valid("490154203237519")
    assert luhn_valid(imei(123456))


def test_same_seed_same_fleet_and_another_seed_another() -> None:
    a = generate_fleet(500, seed=7, gateways=3)
    assert a == generate_fleet(500, seed=7, gateways=3)
    assert a != generate_fleet(500, seed=8, gateways=3)


@pytest.mark.parametrize("n", [0, 1, 5, 6, 7, 300, 2000])
def test_kind_counts_add_up_and_cover_every_kind(n: int) -> None:
    counts = kind_counts(n)
    assert sum(counts.values()) == n
    assert set(counts) == set(KINDS)
    if n >= len(KINDS):
        assert min(counts.values()) >= 1


def test_a_fleet_is_a_valid_registry_spread_over_the_city() -> None:
    devices = generate_fleet(3000, seed=1, gateways=4)
    ids = [d.device for d in devices]
    assert len(set(ids)) == len(ids)
    for d in devices:
        assert DEVICE_ID_RE.fullmatch(d.device)
        assert d.device.startswith("urn:imei:") and luhn_valid(d.device[9:])
        assert len(d.device[9:]) == 15
        # within Zhengzhou's urban area
        assert 34.6 < d.lat < 35.0 and 113.4 < d.lon < 113.9
    registry = parse_registry(format_registry(devices))
    assert len(registry) == 3000
    districts = collections.Counter(d.district for d in devices)
    assert set(districts) == {d.name for d in ZHENGZHOU}
    kinds = collections.Counter(d.kind for d in devices)
    # meters outnumber air stations, as in a real deployment
    assert kinds["water_meter"] > kinds["traffic_counter"] > kinds["air_station"]
    gateways = collections.Counter(d.gateway for d in devices)
    assert set(gateways) == set(gateway_ids(4))
    # a gateway serves nearby sites: no site is split between gateways
    site_gateways = collections.defaultdict(set)
    for d in devices:
        site_gateways[(d.district, d.site)].add(d.gateway)
    assert all(len(g) == 1 for g in site_gateways.values())


def test_more_gateways_than_sites_deals_devices_in_turn() -> None:
    devices = generate_fleet(100, seed=1, gateways=50)
    assert len({d.gateway for d in devices}) == 50


def test_fleet_generate_command_writes_a_loadable_registry(tmp_path: Path) -> None:
    out = tmp_path / "fleet.csv"
    cmd = [sys.executable, "-m", "citysense.cli", "fleet", "generate"]
    args = ["--devices", "40", "--seed", "5", "--gateways", "2", "--output", str(out)]
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    registry = load_registry(out)
    assert len(registry) == 40
    assert {d.gateway for d in registry.values()} == {"gw-01", "gw-02"}
    again = subprocess.run(
        [*cmd, "--devices", "40", "--seed", "5", "--gateways", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert again.returncode == 0
    assert again.stdout == out.read_text()


def test_fleet_generate_refuses_bad_options() -> None:
    cmd = [sys.executable, "-m", "citysense.cli", "fleet", "generate", "--gateways", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2
    assert "gateways" in done.stderr
