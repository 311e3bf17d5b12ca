"""The three module families as data: one :class:`Dialect` table each, no class hierarchy.

A table names the commands the driver sends, the regular expressions that read their answers,
the URCs that announce data, the boot-banner lines and how a datagram reaches the host:

* ``read`` -- a URC announces it, the host reads it (BC95 ``+NSONMI`` then ``AT+NSORF``,
  again while bytes remain);
* ``hex`` -- the URC carries it in hex (SIM7020 ``+CSONMI``);
* ``raw`` -- the URC line is followed by the raw bytes (BC66 ``+QIURC: "recv"`` in direct push
  mode).

Facts come from PROTOCOLS.md (section 9 where it differs from sections 1-6); what the tables
assume beyond it is listed in the docs page.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from citysense.model import SERIAL_DIALECTS

RecvMode = Literal["read", "hex", "raw"]
LengthUnit = Literal["bytes", "hex"]


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between module families (see the module docstring)."""

    name: str
    description: str
    baudrate: int
    boot_prefixes: tuple[str, ...]  #: lines that are part of a boot banner
    boot_done: tuple[str, ...]  #: the banner line after which the module takes commands
    init: tuple[str, ...]  #: sent after every boot, in order (echo off first)
    product: str  #: product identification command
    firmware: str
    iccid: str
    iccid_re: re.Pattern[str]
    radio: tuple[str, ...]  #: commands whose lines feed ``radio_parser``
    radio_parser: Literal["nuestats", "ceng", "qeng"]
    open_socket: str  #: template: {port} (and {sock} {ip} {rport} when opened by URC)
    open_socket_re: re.Pattern[str]  #: a response line or URC giving ``sock`` (and ``err``)
    open_socket_by_urc: bool
    bind_socket: str | None  #: template: {sock} {port}; binds the local port after opening
    close_socket: str  #: template: {sock}
    socket_ids: tuple[int, ...]  #: closed before opening ours: a lost answer may have left one
    send: str  #: template: {sock} {ip} {port} {len} {hex}
    send_len_unit: LengthUnit
    send_connect: str | None  #: sent before ``send`` when the socket needs a peer
    send_reopen: bool  #: the peer is fixed at open: reopen the socket to send elsewhere
    send_result: bool  #: the send ends with ``SEND OK``/``SEND FAIL`` after ``OK``
    data_urc: re.Pattern[str]  #: groups: sock, len, and hex (mode hex)
    recv_mode: RecvMode
    read: str | None  #: template: {sock} {max}
    read_re: re.Pattern[str] | None  #: groups: sock ip port len hex remaining
    raw_after: re.Pattern[str] | None
    downlink_urc: re.Pattern[str] | None  #: operator-platform (CDP) downlink, groups len hex
    sleep_urcs: Mapping[str, bool]  #: URC line -> asleep
    max_datagram: int
    retry_codes: frozenset[int] = frozenset()  #: ``+CME ERROR`` codes of a busy module


_BC95 = Dialect(
    name="bc95",
    description="Quectel BC95-G / BC28 (Huawei Boudica 'N' commands)",
    baudrate=9600,
    boot_prefixes=(
        "REBOOT",
        "Neul",
        "u-blox",
        "Boot:",
        "Security B..",
        "Security A..",
        "Protocol A..",
        "Apps A..",
    ),
    boot_done=("Neul", "u-blox"),
    init=("ATE0", "AT+CMEE=1", "AT+CEREG=1", "AT+CSCON=1", "AT+NPSMR=1", "AT+NNMI=1"),
    product="ATI",
    firmware="AT+CGMR",
    iccid="AT+NCCID",
    iccid_re=re.compile(r"\+NCCID:\s*(?P<iccid>[0-9A-Fa-f]{18,22})"),
    radio=("AT+NUESTATS",),
    radio_parser="nuestats",
    open_socket="AT+NSOCR=DGRAM,17,{port},1",
    open_socket_re=re.compile(r"(?P<sock>[0-6])"),
    open_socket_by_urc=False,
    bind_socket=None,
    close_socket="AT+NSOCL={sock}",
    socket_ids=tuple(range(7)),
    send="AT+NSOST={sock},{ip},{port},{len},{hex}",
    send_len_unit="bytes",
    send_connect=None,
    send_reopen=False,
    send_result=False,
    data_urc=re.compile(r"\+NSONMI:\s*(?P<sock>\d+),(?P<len>\d+)"),
    recv_mode="read",
    read="AT+NSORF={sock},{max}",
    read_re=re.compile(
        r"(?P<sock>\d+),(?P<ip>[0-9A-Fa-f.:]+),(?P<port>\d+),(?P<len>\d+),"
        r"(?P<hex>[0-9A-Fa-f]*),(?P<remaining>\d+)"
    ),
    raw_after=None,
    downlink_urc=re.compile(r"\+NNMI:\s*(?P<len>\d+),(?P<hex>[0-9A-Fa-f]*)"),
    sleep_urcs={"+NPSMR:1": True, "+NPSMR:0": False},
    max_datagram=512,
    retry_codes=frozenset({159, 536, 537}),  # uplink busy, UART buffer, back-off timer
)

_SIM7020 = Dialect(
    name="sim7020",
    description="SIMCom SIM7020 (CSO* sockets)",
    baudrate=115200,
    # no RDY banner: drivers poll AT; +CPIN: READY follows power-up
    boot_prefixes=("+CPIN: READY",),
    boot_done=("+CPIN: READY",),
    init=("ATE0", "AT+CMEE=1", "AT+CEREG=1", "AT+CPSMSTATUS=1"),
    product="AT+GSV",
    firmware="AT+CGMR",
    iccid="AT+CCID",
    iccid_re=re.compile(r"(?P<iccid>[0-9A-Fa-f]{18,22})"),
    radio=("AT+CENG?",),
    radio_parser="ceng",
    open_socket="AT+CSOC=1,2,1",
    open_socket_re=re.compile(r"\+CSOC:\s*(?P<sock>\d+)"),
    open_socket_by_urc=False,
    bind_socket="AT+CSOB={sock},{port}",
    close_socket="AT+CSOCL={sock}",
    socket_ids=tuple(range(5)),
    send='AT+CSOSEND={sock},{len},"{hex}"',
    send_len_unit="hex",
    send_connect='AT+CSOCON={sock},{port},"{ip}"',
    send_reopen=False,
    send_result=False,
    data_urc=re.compile(r"\+CSONMI:\s*(?P<sock>\d+),(?P<len>\d+),(?P<hex>[0-9A-Fa-f]*)"),
    recv_mode="hex",
    read=None,
    read_re=None,
    raw_after=None,
    downlink_urc=None,
    sleep_urcs={'+CPSMSTATUS: "ENTER PSM"': True, '+CPSMSTATUS: "EXIT PSM"': False},
    max_datagram=512,
)

_BC66 = Dialect(
    name="bc66",
    description="Quectel BC66 / BC26 (QI* sockets, MediaTek MT2625)",
    baudrate=115200,
    boot_prefixes=("RDY", "F1:", "Leaving the BROM"),
    boot_done=("RDY",),
    init=(
        "ATE0",
        "AT+CMEE=1",
        "AT+CEREG=1",
        "AT+QNBIOTEVENT=1,1",
        'AT+QICFG="dataformat",1,0',
    ),
    product="ATI",
    firmware="AT+QGMR",
    iccid="AT+QCCID",
    iccid_re=re.compile(r"\+QCCID:\s*(?P<iccid>[0-9A-Fa-f]{18,22})"),
    radio=("AT+QENG=0",),
    radio_parser="qeng",
    # service "UDP" with a remote address; 0.0.0.0:0 until a send names one
    open_socket='AT+QIOPEN=1,{sock},"UDP","{ip}",{rport},{port},1',
    open_socket_re=re.compile(r"\+QIOPEN:\s*(?P<sock>\d+),(?P<err>\d+)"),
    open_socket_by_urc=True,
    bind_socket=None,
    close_socket="AT+QICLOSE={sock}",
    socket_ids=(0,),
    send="AT+QISEND={sock},{len},{hex}",
    send_len_unit="bytes",
    send_connect=None,
    send_reopen=True,
    send_result=True,
    data_urc=re.compile(r'\+QIURC:\s*"recv",(?P<sock>\d+),(?P<len>\d+)'),
    recv_mode="raw",
    read=None,
    read_re=None,
    raw_after=re.compile(r'\+QIURC:\s*"recv",\d+,(?P<len>\d{1,4})'),
    downlink_urc=None,
    sleep_urcs={'+QNBIOTEVENT: "ENTER PSM"': True, '+QNBIOTEVENT: "EXIT PSM"': False},
    max_datagram=1024,
)

DIALECTS: Mapping[str, Dialect] = {d.name: d for d in (_BC95, _SIM7020, _BC66)}
if tuple(DIALECTS) != SERIAL_DIALECTS:
    raise RuntimeError("firmware_bridge.dialects and citysense.model.SERIAL_DIALECTS differ")


def dialect_of(name: str) -> Dialect:
    """The table for ``name`` (``bc95``, ``sim7020``, ``bc66``); :class:`KeyError` if unknown."""
    return DIALECTS[name]
