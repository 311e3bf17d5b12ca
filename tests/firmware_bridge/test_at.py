"""Pure tests of the AT core: PROTOCOLS.md transcripts, every split, URCs anywhere."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.at import (
    Aborted,
    AtSession,
    Echo,
    Event,
    Final,
    Garbage,
    LineReader,
    Prompt,
    Response,
    Stray,
    TextLine,
    Timeout,
    Urc,
    command_name,
    parse_final,
    split_fields,
)
from firmware_bridge.dialects import DIALECTS, Dialect

OK = Final("ok", "OK")


def U(line: str, payload: bytes | None = None) -> Urc:
    name, _, args = line.partition(":")
    return Urc(line, name.strip().upper(), args.strip(), "urc", payload)


def B(line: str) -> Urc:
    return Urc(line, line, "", "boot")


def R(command: str, *lines: str, final: Final = OK) -> Response:
    return Response(command, lines, final)


def wire(*lines: str) -> bytes:
    """Module output: each line as ``\\r\\n<line>\\r\\n``."""
    return b"".join(b"\r\n" + line.encode() + b"\r\n" for line in lines)


@dataclass(frozen=True)
class Exchange:
    command: str | None  #: None: nothing sent, the module speaks unasked
    wire: bytes
    expected: tuple[Event, ...]
    send_result: bool = False
    expect_reboot: bool = False


def X(command: str | None, data: bytes, *expected: Event, **kw: bool) -> Exchange:
    return Exchange(command, data, expected, **kw)


NUESTATS = (
    "Signal power:-758",
    "Total power:-719",
    "TX power:40",
    "TX time:2330",
    "RX time:73205",
    "Cell ID:6160743",
    "ECL:1",
    "SNR:134",
    "EARFCN:3547",
    "PCI:254",
    "RSRQ:-109",
    "OPERATOR MODE:4",
    "CURRENT BAND:8",
)
NRB_BANNER = (
    "Boot: Unsigned",
    "Security B.. Verified",
    "Protocol A.. Verified",
    "Apps A...... Verified",
    "REBOOT_CAUSE_APPLICATION_AT",
    "Neul",
)
CSONMI = "+CSONMI: 0,28,68656C6C6F2053494D3730323045"
CEREG4 = '+CEREG: 4,1,"5B57","01A50B1A",9,"00",,,"00000001","11100000"'
QENG = '+QENG: 0,2506,2,146,"772F253",-90,-8,-83,16,5,"785F",0,14,3'
RAW = b"a\r\n>b"  # a raw payload holding a line break and a prompt character

TRANSCRIPTS: dict[str, tuple[Exchange, ...]] = {
    "bc95": (
        X("AT", wire("OK"), R("AT")),
        X(
            "ATI",
            wire("Quectel", "BC28", "Revision:BC28JAR01A03", "OK"),
            R("ATI", "Quectel", "BC28", "Revision:BC28JAR01A03"),
        ),
        X(
            "AT+CGSN=1",
            wire("+CGSN:867726031076062", "OK"),
            R("AT+CGSN=1", "+CGSN:867726031076062"),
        ),
        X("AT+CIMI", wire("460111175090234", "OK"), R("AT+CIMI", "460111175090234")),
        X(
            "AT+NCCID",
            wire("+NCCID:89860317492033172681", "OK"),
            R("AT+NCCID", "+NCCID:89860317492033172681"),
        ),
        X("AT+CEREG?", wire("+CEREG:0,1", "OK"), R("AT+CEREG?", "+CEREG:0,1")),
        X("AT+CSQ", wire("+CSQ:18,99", "OK"), R("AT+CSQ", "+CSQ:18,99")),
        X(
            "AT+CGPADDR",
            wire("+CGPADDR:0,10.169.241.248", "OK"),
            R("AT+CGPADDR", "+CGPADDR:0,10.169.241.248"),
        ),
        X("AT+NUESTATS", wire(*NUESTATS, "OK"), R("AT+NUESTATS", *NUESTATS)),
        X(
            "AT+NUESTATS=CELL",
            wire("NUESTATS:CELL,3547,186,1,-813,-134,-715,10", "OK"),
            R("AT+NUESTATS=CELL", "NUESTATS:CELL,3547,186,1,-813,-134,-715,10"),
        ),
        X("AT+NSOCR=DGRAM,17,0,1", wire("1", "OK"), R("AT+NSOCR=DGRAM,17,0,1", "1")),
        X(
            "AT+NSOST=1,203.0.113.5,5683,5,48656C6C6F,100",
            wire("1,5", "OK"),
            R("AT+NSOST=1,203.0.113.5,5683,5,48656C6C6F,100", "1,5"),
        ),
        X(None, wire("+NSOSTR:1,100,1", "+NSONMI:1,5"), U("+NSOSTR:1,100,1"), U("+NSONMI:1,5")),
        X(
            "AT+NSORF=1,512",
            wire("1,203.0.113.5,5683,5,776F726C64,0", "OK"),
            R("AT+NSORF=1,512", "1,203.0.113.5,5683,5,776F726C64,0"),
        ),
        X("AT+NSOCL=1", wire("OK"), R("AT+NSOCL=1")),
        X(
            "AT+NMGS=5,2020333435",
            wire("+CME ERROR:513"),
            R("AT+NMGS=5,2020333435", final=Final("cme_error", "+CME ERROR:513", 513)),
        ),
        X("AT+NMGS=5,2020333435", wire("OK"), R("AT+NMGS=5,2020333435")),
        X(None, wire("+NSMI:SENT", "+NNMI:2,4F4E"), U("+NSMI:SENT"), U("+NNMI:2,4F4E")),
        X(
            "AT+NRB",
            wire("REBOOTING") + b"H?" + wire(*NRB_BANNER, "OK"),
            B("REBOOTING"),
            *(B(line) for line in NRB_BANNER),
            R("AT+NRB", "H?"),  # the garbage after REBOOTING stays with the command
            expect_reboot=True,
        ),
        X(None, wire("+CSCON:1", "+NPSMR:1"), U("+CSCON:1"), U("+NPSMR:1")),
    ),
    "sim7020": (
        X(
            "AT+GSV",
            wire("SIMCOM_Ltd", "SIM7020G", "Revision:1752B02SIM7020G", "OK"),
            R("AT+GSV", "SIMCOM_Ltd", "SIM7020G", "Revision:1752B02SIM7020G"),
        ),
        X(
            "AT+CGSN=1",
            wire("+CGSN: 866435041234567", "OK"),
            R("AT+CGSN=1", "+CGSN: 866435041234567"),
        ),
        X("AT+CCID", wire("89860317492033172681", "OK"), R("AT+CCID", "89860317492033172681")),
        X("AT+CEREG?", wire(CEREG4, "OK"), R("AT+CEREG?", CEREG4)),
        X("AT+CSOC=1,2,1", wire("+CSOC: 0", "OK"), R("AT+CSOC=1,2,1", "+CSOC: 0")),
        X('AT+CSOCON=0,5683,"203.0.113.5"', wire("OK"), R('AT+CSOCON=0,5683,"203.0.113.5"')),
        X("AT+CSOSEND=0,10,48656C6C6F", wire("OK"), R("AT+CSOSEND=0,10,48656C6C6F")),
        X(None, wire(CSONMI), U(CSONMI)),
        X(
            "AT+CENG?",
            wire('+CENG: 2506,2,146,"0772F253",-90,-8,-83,16,5,"785F",0,2300', "OK"),
            R("AT+CENG?", '+CENG: 2506,2,146,"0772F253",-90,-8,-83,16,5,"785F",0,2300'),
        ),
        X(
            "AT+CSOSEND=0,10,48656C6C6F",
            wire("+CME ERROR: 30"),
            R("AT+CSOSEND=0,10,48656C6C6F", final=Final("cme_error", "+CME ERROR: 30", 30)),
        ),
        X(None, wire('+CPSMSTATUS: "ENTER PSM"'), U('+CPSMSTATUS: "ENTER PSM"')),
        X(
            None,
            wire("+CPIN: READY"),  # no RDY banner on the SIM7020
            B("+CPIN: READY"),
        ),
        X("AT+CSOCL=0", wire("OK"), R("AT+CSOCL=0")),
    ),
    "bc66": (
        X(
            "ATI",
            b"ATI\r" + wire("Quectel_Ltd", "Quectel_BC66", "Revision: BC66NBR01A01", "OK"),
            Echo("ATI"),
            R("ATI", "Quectel_Ltd", "Quectel_BC66", "Revision: BC66NBR01A01"),
        ),
        X(
            "AT+QGMR",
            wire("BC66NBR01A01_01.002.01.002", "OK"),
            R("AT+QGMR", "BC66NBR01A01_01.002.01.002"),
        ),
        X(
            "AT+QCCID",
            wire("+QCCID: 89860317492033172681", "OK"),
            R("AT+QCCID", "+QCCID: 89860317492033172681"),
        ),
        X("AT+CSQ", wire("+CSQ: 23,0", "OK"), R("AT+CSQ", "+CSQ: 23,0")),
        X(
            'AT+QIOPEN=1,0,"UDP","203.0.113.5",5683,0,1',
            wire("OK", "+QIOPEN: 0,0"),
            R('AT+QIOPEN=1,0,"UDP","203.0.113.5",5683,0,1'),
            U("+QIOPEN: 0,0"),
        ),
        X(
            "AT+QISEND=0,5",
            b"\r\n> " + wire("OK", "SEND OK"),
            Prompt("AT+QISEND=0,5"),
            R("AT+QISEND=0,5", final=Final("send_ok", "SEND OK")),
            send_result=True,
        ),
        X(
            "AT+QISEND=0,5,3132333435",
            wire("OK", "SEND FAIL"),
            R("AT+QISEND=0,5,3132333435", final=Final("send_fail", "SEND FAIL")),
            send_result=True,
        ),
        X(
            None,
            b'\r\n+QIURC: "recv",0,5\r\n' + RAW + b"\r\n",
            U('+QIURC: "recv",0,5', RAW),
        ),
        X("AT+QENG=0", wire(QENG, "OK"), R("AT+QENG=0", QENG)),
        X(
            "AT+QISEND=0,5,3132333435",
            wire("+CME ERROR: 569"),
            R("AT+QISEND=0,5,3132333435", final=Final("cme_error", "+CME ERROR: 569", 569)),
        ),
        X(None, wire('+QIURC: "closed",0'), U('+QIURC: "closed",0')),
        X(
            None,
            wire("F1: 0000 0000", "Leaving the BROM", "RDY"),
            B("F1: 0000 0000"),
            B("Leaving the BROM"),
            B("RDY"),
        ),
        X("AT+QICLOSE=0", wire("OK"), R("AT+QICLOSE=0")),
    ),
}


def session_for(dialect: Dialect) -> AtSession:
    return AtSession(boot_prefixes=dialect.boot_prefixes, raw_after=dialect.raw_after)


def play(dialect: Dialect, exchanges: tuple[Exchange, ...], cuts: list[list[int]]) -> list[Event]:
    """Feed each exchange's bytes cut at the given offsets; all events in order."""
    session = session_for(dialect)
    events: list[Event] = []
    for ex, points in zip(exchanges, cuts, strict=True):
        if ex.command is not None:
            session.send(
                ex.command,
                0.0,
                5.0,
                await_send_result=ex.send_result,
                expect_reboot=ex.expect_reboot,
            )
        bounds = [0, *sorted(p for p in points if 0 < p < len(ex.wire)), len(ex.wire)]
        for a, b in itertools.pairwise(bounds):
            events.extend(session.receive(ex.wire[a:b]))
        assert not session.busy, f"{ex.command} still in flight"
    return events


def expected_of(exchanges: tuple[Exchange, ...]) -> list[Event]:
    return [e for ex in exchanges for e in ex.expected]


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
def test_transcript_parses_to_the_expected_events(name: str) -> None:
    exchanges = TRANSCRIPTS[name]
    assert play(DIALECTS[name], exchanges, [[] for _ in exchanges]) == expected_of(exchanges)


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
def test_transcript_fed_byte_by_byte(name: str) -> None:
    exchanges = TRANSCRIPTS[name]
    cuts = [list(range(len(ex.wire))) for ex in exchanges]
    assert play(DIALECTS[name], exchanges, cuts) == expected_of(exchanges)


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_every_split_gives_the_same_events(name: str, data: st.DataObject) -> None:
    exchanges = TRANSCRIPTS[name]
    cuts = [
        data.draw(st.lists(st.integers(0, len(ex.wire)), max_size=12), label=ex.command or "urc")
        for ex in exchanges
    ]
    assert play(DIALECTS[name], exchanges, cuts) == expected_of(exchanges)


URCS = {
    "bc95": ("+NSONMI:1,5", "+CEREG:2", "+CSCON:0", "+NPSMR:0", "+NSOSTR:1,100,1"),
    "sim7020": (CSONMI, "+CEREG: 1", '+CPSMSTATUS: "EXIT PSM"', "+CSOERR: 0,4"),
    "bc66": ('+QIURC: "closed",0', "+CEREG: 5", '+QNBIOTEVENT: "ENTER PSM"', "+CSCON: 1"),
}


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_urcs_anywhere_are_routed_not_taken_for_responses(name: str, data: st.DataObject) -> None:
    """A URC between any two lines of any answer (even before the echo or the final result)
    comes out as a URC; the command's response is unchanged."""
    dialect = DIALECTS[name]
    commands = [ex for ex in TRANSCRIPTS[name] if ex.command is not None and not ex.expect_reboot]
    ex = data.draw(st.sampled_from(commands), label="exchange")
    urc = data.draw(st.sampled_from(URCS[name]), label="urc")
    # line boundaries of the answer: offsets just after each "\r\n"
    boundaries = [0] + [i + 2 for i in range(len(ex.wire) - 1) if ex.wire[i : i + 2] == b"\r\n"]
    at = data.draw(st.sampled_from(boundaries), label="at")
    wire_with_urc = ex.wire[:at] + b"\r\n" + urc.encode() + b"\r\n" + ex.wire[at:]
    points = data.draw(st.lists(st.integers(0, len(wire_with_urc)), max_size=8), label="cuts")
    events = play(dialect, (Exchange(ex.command, wire_with_urc, (), ex.send_result),), [points])
    assert [e for e in events if not isinstance(e, Urc)] == [
        e for e in ex.expected if not isinstance(e, Urc)
    ]
    assert U(urc) in events


def test_bc95_missing_space_and_others_space_read_alike() -> None:
    assert U("+CSQ:18,99").fields == U("+CSQ: 18,99").fields == ["18", "99"]
    assert split_fields('4,1,"5B57","01A50B1A",9,"00",,,"00000001","11100000"')[2:4] == [
        "5B57",
        "01A50B1A",
    ]


def test_cr_only_and_crlf_and_lf_line_ends_are_alike() -> None:
    for sep in (b"\r", b"\n", b"\r\n", b"\n\r", b"\r\r\n"):
        session = AtSession()
        session.send("AT+CSQ", 0.0, 1.0)
        events = session.receive(sep + b"+CSQ:18,99" + sep + sep + b"OK" + sep)
        assert events == [R("AT+CSQ", "+CSQ:18,99")], sep


def test_echo_is_recognised_and_not_taken_as_a_line() -> None:
    session = AtSession()
    session.send("AT+CIMI", 0.0, 1.0)
    assert session.receive(b"AT+CIMI\r\r\n460111175090234\r\n\r\nOK\r\n") == [
        Echo("AT+CIMI"),
        R("AT+CIMI", "460111175090234"),
    ]


def test_overlong_line_is_reported_once_and_what_follows_still_parses() -> None:
    reader = LineReader(max_line=64)
    junk = b"J" * 4096
    tokens = reader.feed(b"\r\n" + junk[:1000]) + reader.feed(junk[1000:] + b"\r\nOK\r\n")
    assert tokens == [Garbage(b"J" * 64, "overlong"), TextLine("OK")]


def test_non_ascii_bytes_are_garbage_not_fatal() -> None:
    session = AtSession()
    session.send("AT", 0.0, 1.0)
    events = session.receive(b"\r\n+CSQ:1\xff\xfe8,99\r\n\x00\x01\r\n\r\nOK\r\n")
    assert events == [
        Garbage(b"+CSQ:1\xff\xfe8,99", "undecodable"),
        Garbage(b"\x00\x01", "undecodable"),
        R("AT"),
    ]


def test_one_command_at_a_time() -> None:
    session = AtSession()
    session.send("AT", 0.0, 1.0)
    with pytest.raises(RuntimeError):
        session.send("AT+CSQ", 0.0, 1.0)


def test_each_command_has_its_own_deadline() -> None:
    session = AtSession()
    session.send("AT+CGATT=1", 10.0, 85.0)
    assert session.deadline == 95.0
    assert session.poll(94.9) == []
    session.receive(b"\r\npartial\r\n")
    assert session.poll(95.0) == [Timeout("AT+CGATT=1", ("partial",))]
    assert not session.busy
    # the late final result is a stray, not the next command's
    assert session.receive(b"\r\nOK\r\n") == [Stray("OK")]
    session.send("AT", 100.0, 0.5)
    assert session.poll(100.4) == []
    assert session.poll(100.5) == [Timeout("AT", ())]


def test_reboot_during_a_command_aborts_it() -> None:
    dialect = DIALECTS["bc95"]
    session = session_for(dialect)
    session.send("AT+NSORF=1,512", 0.0, 1.0)
    events = session.receive(b"\r\nREBOOTING\r\n")
    assert events == [
        B("REBOOTING"),
        Aborted("AT+NSORF=1,512", (), "module rebooted (REBOOTING)"),
    ]
    assert not session.busy


def test_response_lines_are_told_from_urcs_by_the_command_name() -> None:
    session = AtSession()
    session.send("AT+CEREG?", 0.0, 1.0)
    events = session.receive(wire("+CSCON:1", "+CEREG:0,1", "+NSONMI:1,5", "OK"))
    assert events == [U("+CSCON:1"), U("+NSONMI:1,5"), R("AT+CEREG?", "+CEREG:0,1")]


def test_finals_and_names() -> None:
    assert parse_final("+CME ERROR: 159") == Final("cme_error", "+CME ERROR: 159", 159)
    assert parse_final("+CME ERROR:513") == Final("cme_error", "+CME ERROR:513", 513)
    assert parse_final("ERROR") == Final("error", "ERROR")
    assert parse_final("OKAY") is None
    assert command_name("AT+NSORF=1,512") == "+NSORF"
    assert command_name("AT+CEREG?") == "+CEREG"
    assert command_name("ATI") == "I"


def test_raw_payload_of_zero_length() -> None:
    session = session_for(DIALECTS["bc66"])
    events = session.receive(b'\r\n+QIURC: "recv",0,0\r\n\r\nOK\r\n')
    assert events == [U('+QIURC: "recv",0,0', b""), Stray("OK")]
