"""Quectel BC66 / BC26 (``QI*`` sockets on a MediaTek MT2625).

A socket is opened with service type ``"UDP"`` and its remote address
(``AT+QIOPEN=1,<id>,"UDP","<ip>",<remote port>,<local port>,<access mode>``); sends go to that
remote (``AT+QISEND=<id>,<len>,<hex>``, ``AT+QISENDEX``, or ``AT+QISEND=<id>,<len>`` then the
bytes after ``>``). Received datagrams are pushed as ``+QIURC: "recv",<id>,<len>`` followed by
the raw bytes. ``+QENG`` radio figures are whole dBm/dB.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from simulators.module.dialects import DialectSpec, Handler
from simulators.module.dialects import common as c
from simulators.module.model import Socket

if TYPE_CHECKING:
    from simulators.module.core import ModuleCore

#: transmit power reported by ``+QENG``, dBm
TX_POWER_DBM = 14


def qeng(m: ModuleCore, op: str, args: str) -> None:
    m.ok(f"+QENG: 0,{c.serving_cell(m, padded=False)},{TX_POWER_DBM},3")


def qiopen(m: ModuleCore, op: str, args: str) -> None:
    parts = [p.strip().strip('"') for p in args.split(",")]
    try:
        ident, service = int(parts[1]), parts[2]
        peer = (parts[3], int(parts[4]))
        local = int(parts[5]) if len(parts) > 5 else 0
    except (ValueError, IndexError):
        m.error(552)
        return
    if service != "UDP" or ident in m.sockets:
        m.error(552 if ident not in m.sockets else 574)
        return
    sock = Socket(ident, local, peer=peer)
    m.ok()

    def opened() -> None:
        m.sockets[ident] = sock
        m.urc(f"+QIOPEN: {ident},0")

    m.later(m.timings.qiopen, opened)


def qisend(m: ModuleCore, op: str, args: str) -> None:
    parts = [p.strip() for p in args.split(",")]
    try:
        sock = m.sockets[int(parts[0])]
        length = int(parts[1])
    except (ValueError, IndexError, KeyError):
        m.error(552)
        return
    if len(parts) == 2:
        # data mode: prompt, then exactly <length> raw bytes
        m.raw_acc = bytearray()
        m.raw_need = length
        m.raw_done = lambda data: _send_done(m, sock, data)
        m.emit_raw(b"\r\n> ")
        return
    try:
        payload = bytes.fromhex(parts[2].strip('"'))
    except ValueError:
        m.error(552)
        return
    if len(parts) != 3 or len(payload) != length:
        m.error(552)
        return
    _send_done(m, sock, payload)


def _send_done(m: ModuleCore, sock: Socket, payload: bytes) -> None:
    m.respond([], "OK")
    if not m.registered or sock.peer is None:
        m.later(m.timings.send_ack, lambda: m.write([("SEND FAIL", None)]))
        return
    m.record_sent(f"{sock.peer[0]}:{sock.peer[1]}", payload)
    m.later(m.timings.send_ack, lambda: m.write([("SEND OK", None)]))


def qiclose(m: ModuleCore, op: str, args: str) -> None:
    if m.sockets.pop(int(args) if args.strip().isdigit() else -1, None) is None:
        m.error(552)
        return
    m.ok()


def announce(m: ModuleCore, sock: Socket, payload: bytes, remote: str) -> None:
    m.urc(f'+QIURC: "recv",{sock.ident},{len(payload)}', payload, raw=payload)


HANDLERS: dict[str, Handler] = {
    **c.COMMON,
    "I": c.answer("Quectel_Ltd", "Quectel_BC66", "Revision: BC66NBR01A01"),
    "+CGMR": c.answer("Revision: BC66NBR01A01"),
    "+QGMR": c.answer("BC66NBR01A01_01.002.01.002"),
    "+QCCID": c.iccid("+QCCID"),
    "+CGPADDR": c.address("+CGPADDR: 1,10.169.241.248"),
    "+QNBIOTEVENT": c.sleep_urc_enable,
    "+QENG": qeng,
    "+QICFG": c.plain_ok,
    "+QIOPEN": qiopen,
    "+QISEND": qisend,
    "+QISENDEX": qisend,
    "+QICLOSE": qiclose,
}

SPEC = DialectSpec(
    name="bc66",
    tac="86681803",
    earfcn=2506,
    band=5,
    colon_space=True,
    banner=lambda cause: ["F1: 0000 0000", "Leaving the BROM", "RDY"],
    reboot_lines=(),
    sleep_line=lambda asleep: f'+QNBIOTEVENT: "{"ENTER PSM" if asleep else "EXIT PSM"}"',
    announce=announce,
    error_while_booting=False,
    handlers=HANDLERS,
)
