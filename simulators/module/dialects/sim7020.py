"""SIMCom SIM7020 (``CSO*`` sockets): no ``RDY`` banner, ``+CPIN: READY`` after power-up.

``AT+CSOB`` binds a local port, ``CSOSEND`` and ``+CSONMI`` lengths count hex characters, and
the ``+CENG`` tx power is in centi-dBm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from simulators.module.dialects import DialectSpec, Handler
from simulators.module.dialects import common as c
from simulators.module.model import Socket

if TYPE_CHECKING:
    from simulators.module.core import ModuleCore

#: transmit power reported by ``+CENG``, centi-dBm (23 dBm)
TX_POWER_CENTI_DBM = 2300


def ceng(m: ModuleCore, op: str, args: str) -> None:
    cell = c.serving_cell(m, padded=True)  # first: it drifts the radio
    m.ok(f"+CENG: {cell},{TX_POWER_CENTI_DBM},{round(m.radio.rsrp) - 3}")


def csoc(m: ModuleCore, op: str, args: str) -> None:
    if args.replace(" ", "") != "1,2,1":
        m.error(50)
        return
    free = [i for i in range(5) if i not in m.sockets]
    if not free:
        m.error(3)
        return
    m.sockets[free[0]] = Socket(free[0], 0)
    m.ok(f"+CSOC: {free[0]}")


def csob(m: ModuleCore, op: str, args: str) -> None:
    """Bind the socket's local port (refused when another socket holds it)."""
    parts = [p.strip().strip('"') for p in args.split(",")]
    try:
        sock = m.sockets[int(parts[0])]
        port = int(parts[1])
    except (ValueError, IndexError, KeyError):
        m.error(50)
        return
    if any(s.local_port == port and s is not sock for s in m.sockets.values()):
        m.error(3)
        return
    sock.local_port = port
    m.ok()


def csocon(m: ModuleCore, op: str, args: str) -> None:
    parts = [p.strip().strip('"') for p in args.split(",")]
    try:
        sock = m.sockets[int(parts[0])]
        sock.peer = (parts[2], int(parts[1]))
    except (ValueError, IndexError, KeyError):
        m.error(50)
        return
    m.ok()


def _payload(length: int, data: str) -> bytes | None:
    """``CSOSEND`` data: quoted text for length 0, else hex with ``length`` hex characters."""
    if data.startswith('"') and data.endswith('"'):
        data = data[1:-1]
    if length == 0:
        return data.encode()
    if length != len(data):
        return None
    try:
        return bytes.fromhex(data)
    except ValueError:
        return None


def csosend(m: ModuleCore, op: str, args: str) -> None:
    parts = args.split(",", 2)
    try:
        sock = m.sockets[int(parts[0])]
        payload = _payload(int(parts[1]), parts[2].strip())
    except (ValueError, IndexError, KeyError):
        m.error(50)
        return
    if payload is None:
        m.error(50)
        return
    if sock.peer is None:
        m.error(3)
        return
    if not m.registered:
        m.error(30)
        return
    m.record_sent(f"{sock.peer[0]}:{sock.peer[1]}", payload)
    m.ok()


def csocl(m: ModuleCore, op: str, args: str) -> None:
    if m.sockets.pop(int(args) if args.strip().isdigit() else -1, None) is None:
        m.error(50)
        return
    m.ok()


def announce(m: ModuleCore, sock: Socket, payload: bytes, remote: str) -> None:
    hexdata = payload.hex().upper()
    m.urc(f"+CSONMI: {sock.ident},{len(hexdata)},{hexdata}", payload)


HANDLERS: dict[str, Handler] = {
    **c.COMMON,
    "+GSV": c.answer("SIMCOM_Ltd", "SIM7020G", "Revision:1752B02SIM7020G"),
    "+CGMR": c.answer("Revision:1752B02SIM7020G"),
    "+CCID": c.iccid(""),
    "+CGPADDR": c.address('+CGPADDR: 1,"10.169.241.248"'),
    "+CPSMSTATUS": c.sleep_urc_enable,
    "+CENG": ceng,
    "+CSOC": csoc,
    "+CSOB": csob,
    "+CSOCON": csocon,
    "+CSOSEND": csosend,
    "+CSOCL": csocl,
}

SPEC = DialectSpec(
    name="sim7020",
    tac="86643504",
    earfcn=2506,
    band=5,
    colon_space=True,
    banner=lambda cause: ["+CPIN: READY"],
    reboot_lines=(),
    sleep_line=lambda asleep: f'+CPSMSTATUS: "{"ENTER PSM" if asleep else "EXIT PSM"}"',
    announce=announce,
    error_while_booting=False,
    handlers=HANDLERS,
)
