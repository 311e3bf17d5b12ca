"""Device registry CSV: clear errors with line numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from citysense.errors import RegistryError
from citysense.registry import Device, format_registry, load_registry, parse_registry

HEADER = "device,kind,district,site,lat,lon,gateway\n"
GOOD = "urn:imei:490154203237518,air_station,zhengdong,ruyi-lake,34.7720,113.7300,gw-zhengdong-01\n"


def test_parse_and_format_round_trip() -> None:
    reg = parse_registry(HEADER + GOOD)
    d = reg["urn:imei:490154203237518"]
    assert d == Device(
        "urn:imei:490154203237518",
        "air_station",
        "zhengdong",
        "ruyi-lake",
        34.772,
        113.73,
        "gw-zhengdong-01",
    )
    assert parse_registry(format_registry(reg.values())) == reg
    assert len(reg.of_gateway("gw-zhengdong-01")) == 1
    assert len(reg.of_gateway("gw-other")) == 0


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ("d1,toaster,x,y,1,2,gw-1", "unknown kind"),
        ("d 1,air_station,x,y,1,2,gw-1", "invalid device id"),
        ("d1,air_station,X,y,1,2,gw-1", "invalid district"),
        ("d1,air_station,x,y,north,2,gw-1", "not numbers"),
        ("d1,air_station,x,y,91,2,gw-1", "out of range"),
        ("d1,air_station,x,y,1,2,GW", "invalid gateway"),
        ("d1,air_station,x,y,1,2", "expected 7 columns"),
    ],
)
def test_bad_rows_name_line_and_reason(row: str, needle: str) -> None:
    with pytest.raises(RegistryError) as err:
        parse_registry(HEADER + GOOD + row + "\n")
    assert err.value.line == 3
    assert needle in str(err.value)
    assert str(err.value).startswith("line 3:")


def test_duplicate_device_and_bad_header() -> None:
    with pytest.raises(RegistryError, match="listed twice"):
        parse_registry(HEADER + GOOD + GOOD)
    with pytest.raises(RegistryError, match="header"):
        parse_registry("id,kind\n")


def test_blank_lines_are_skipped_and_missing_file_is_clear(tmp_path: Path) -> None:
    assert len(parse_registry(HEADER + "\n" + GOOD + "\n")) == 1
    with pytest.raises(RegistryError, match="cannot read"):
        load_registry(tmp_path / "none.csv")
