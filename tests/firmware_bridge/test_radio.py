"""Pure tests of radio figures (units per family) and PSM/eDRX timer encodings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.dialects import DIALECTS
from firmware_bridge.radio import (
    RadioFigures,
    decode_timer,
    edrx_code,
    encode_t3324,
    encode_t3412,
    parse_ceng,
    parse_nuestats,
    parse_qeng,
)
from tests.firmware_bridge.test_at import NUESTATS, QENG


def test_bc95_nuestats_is_in_centibels() -> None:
    f = parse_nuestats(NUESTATS)
    assert f.rsrp == -75.8
    assert f.rssi == -71.9
    assert f.tx_power == 4.0
    assert f.rsrq == -10.9
    assert f.snr == 13.4
    assert (f.ecl, f.cell_id, f.pci, f.earfcn, f.band) == (1, 6160743, 254, 3547, 8)
    assert f.health_values() == {"rsrp": -75.8, "snr": 13.4, "ecl": 1.0}
    assert f.extra()["cell_id"] == 6160743


def test_bc95_typed_variants() -> None:
    radio = parse_nuestats(["NUESTATS:RADIO,Signal power:-842", "NUESTATS:RADIO,SNR:-15"])
    assert (radio.rsrp, radio.snr) == (-84.2, -1.5)
    cell = parse_nuestats(
        ["NUESTATS:CELL,3547,17,0,-999,-200,-900,-50", "NUESTATS:CELL,3547,186,1,-813,-134,-715,10"]
    )
    assert (cell.earfcn, cell.pci, cell.rsrp, cell.rsrq, cell.rssi, cell.snr) == (
        3547,
        186,
        -81.3,
        -13.4,
        -71.5,
        1.0,
    )


def test_not_available_sentinels_are_dropped() -> None:
    f = parse_nuestats(["Signal power:-32768", "ECL:255", "Cell ID:4294967295", "PCI:65535"])
    assert f == RadioFigures()
    assert f.health_values() == {}


def test_bc66_qeng_is_plain_dbm() -> None:
    f = parse_qeng([QENG])
    assert (f.earfcn, f.pci, f.cell_id, f.rsrp, f.rsrq, f.rssi, f.snr) == (
        2506,
        146,
        0x772F253,
        -90.0,
        -8.0,
        -83.0,
        16.0,
    )
    assert (f.band, f.tac, f.ecl, f.tx_power) == (5, 0x785F, 0, 14.0)  # whole dBm
    for unknown in ("128", "-128", ""):
        line = QENG.replace('"785F",0,14,3', f'"785F",255,{unknown},3')
        g = parse_qeng([line])
        assert (g.tx_power, g.ecl, g.rsrp) == (None, None, -90.0)


def test_sim7020_ceng() -> None:
    f = parse_ceng(['+CENG: 2506,2,146,"0772F253",-90,-8,-83,16,5,"785F",0,2300,-93'])
    assert (f.rsrp, f.snr, f.ecl, f.cell_id, f.tac) == (-90.0, 16.0, 0, 0x772F253, 0x785F)
    assert f.tx_power == 23.0  # centi-dBm
    assert parse_ceng(["garbage"]) == RadioFigures()


def test_out_of_catalog_range_values_are_not_health_values() -> None:
    assert RadioFigures(rsrp=-20.0, snr=55.0, ecl=3).health_values() == {}


@pytest.mark.parametrize(
    ("bits", "seconds", "t3324"),
    [
        ("00111000", 24 * 3600, False),
        ("00000101", 10, True),
        ("01000111", 70 * 3600, False),
        ("00100100", 4 * 60, True),
        ("11100000", None, False),
    ],
)
def test_protocols_timer_examples(bits: str, seconds: int | None, t3324: bool) -> None:
    assert decode_timer(bits, t3324) == seconds
    encode = encode_t3324 if t3324 else encode_t3412
    assert decode_timer(encode(seconds), t3324) == seconds


@given(st.integers(0, 31), st.sampled_from(["000", "001", "010", "011", "100", "101", "110"]))
def test_t3412_round_trips(value: int, unit: str) -> None:
    bits = unit + f"{value:05b}"
    seconds = decode_timer(bits)
    assert seconds is not None
    assert decode_timer(encode_t3412(seconds)) == seconds


def test_bad_timer_strings_are_refused() -> None:
    with pytest.raises(ValueError):
        decode_timer("0101")
    with pytest.raises(ValueError):
        decode_timer("01100001", t3324=True)


def test_edrx_codes() -> None:
    assert edrx_code(81.92) == "0101"
    assert edrx_code(20) == "0010"
    assert edrx_code(100000) == "1111"


def test_dialect_tables_read_the_protocols_lines() -> None:
    bc95, sim, bc66 = DIALECTS["bc95"], DIALECTS["sim7020"], DIALECTS["bc66"]
    assert bc95.read_re is not None
    m = bc95.read_re.fullmatch("1,203.0.113.5,5683,5,776F726C64,0")
    assert m is not None and bytes.fromhex(m.group("hex")) == b"world"
    assert bc95.data_urc.match("+NSONMI:1,5")
    assert bc95.iccid_re.search("+NCCID:89860317492033172681")
    m = sim.data_urc.match("+CSONMI: 0,28,68656C6C6F2053494D3730323045")
    assert m is not None and bytes.fromhex(m.group("hex")) == b"hello SIM7020E"
    assert sim.open_socket_re.fullmatch("+CSOC: 0")
    assert bc66.raw_after is not None and bc66.raw_after.fullmatch('+QIURC: "recv",0,5')
    assert bc66.open_socket_re.match("+QIOPEN: 0,0")
    for d in DIALECTS.values():
        assert d.init[0] == "ATE0"
