"""Quectel BC95-G / BC28 (Huawei Boudica ``N`` commands): no space after ``:``.

``+NSONMI`` is sent only when a socket's receive buffer goes from empty to non-empty; a
``busy`` fault answers ``+CME ERROR: 159`` (uplink busy), ``536`` (UART buffer) or ``537``
(back-off timer), the errors drivers retry; ``TX power`` is ``-32768`` before any send.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from simulators.module.dialects import DialectSpec, Handler
from simulators.module.dialects import common as c
from simulators.module.model import Socket

if TYPE_CHECKING:
    from simulators.module.core import ModuleCore

#: the errors a busy module answers, which drivers retry
RETRYABLE = (159, 536, 537)
TX_UNKNOWN = -32768
#: the ``AT+CGMR`` answer: one line per firmware component
FIRMWARE = (
    "SSB,V150R100C10B200SP1",
    "SECURITY_A,V150R100C20B300SP5",
    "PROTOCOL_A,V150R100C20B300SP5",
    "APPLICATION_A,V150R100C20B300SP5",
    "SECURITY_B,V150R100C20B300SP5",
    "RADIO,Hi2115_RF1",
)


def _busy(m: ModuleCore) -> bool:
    if not m.fault("busy"):
        return False
    m.stats["busy"] += 1
    m.error(m.busy_rng.choice(RETRYABLE))
    return True


def nmgs(m: ModuleCore, op: str, args: str) -> None:
    length, _, hexdata = args.partition(",")
    try:
        payload = bytes.fromhex(hexdata)
        ok = len(payload) == int(length or -1)
    except ValueError:
        ok = False
    if not ok:
        m.error(50)
        return
    m.record_sent("cdp", payload)
    m.ok()


def nrb(m: ModuleCore, op: str, args: str) -> None:
    m.reboot("REBOOT_CAUSE_APPLICATION_AT")


def nuestats(m: ModuleCore, op: str, args: str) -> None:
    r = m.radio
    r.drift(m.rng)
    rsrp, rsrq, snr = round(r.rsrp * 10), round(r.rsrq * 10), round(r.snr * 10)
    fields = [
        ("Signal power", rsrp),
        ("Total power", round((r.rsrp + 20) * 10)),
        ("TX power", 230 if m.sent_any else TX_UNKNOWN),
        ("TX time", 2330),
        ("RX time", 73205),
        ("Cell ID", r.cell_id),
        ("ECL", r.ecl),
        ("SNR", snr),
        ("EARFCN", r.earfcn),
        ("PCI", r.pci),
        ("RSRQ", rsrq),
        ("OPERATOR MODE", 4),
        ("CURRENT BAND", r.band),
    ]
    kind = args.strip().upper()
    if kind == "CELL":
        m.ok(
            f"NUESTATS:CELL,{r.earfcn},{r.pci},1,{rsrp},{rsrq},{round((r.rsrp + 20) * 10)},{snr}",
            f"NUESTATS:CELL,{r.earfcn},{(r.pci + 7) % 504},0,{rsrp - 80},{rsrq - 20},"
            f"{round((r.rsrp + 12) * 10)},{snr - 40}",
        )
    elif kind == "RADIO":
        m.ok(*(f"NUESTATS:RADIO,{k}:{v}" for k, v in fields))
    elif kind in ("", "ALL"):
        m.ok(*(f"{k}:{v}" for k, v in fields))
    else:
        m.error(50)


def nsocr(m: ModuleCore, op: str, args: str) -> None:
    parts = args.split(",")
    if len(parts) < 3 or parts[0] != "DGRAM" or parts[1] != "17":
        m.error(50)
        return
    free = [i for i in range(1, 7) if i not in m.sockets]
    port = int(parts[2] or 0)
    if not free or (port and any(s.local_port == port for s in m.sockets.values())):
        m.respond([], "ERROR")
        return
    m.sockets[free[0]] = Socket(free[0], port)
    m.ok(str(free[0]))


def nsost(m: ModuleCore, op: str, args: str) -> None:
    parts = args.split(",")
    try:
        ident, ip, port, length = int(parts[0]), parts[1], int(parts[2]), int(parts[3])
        payload = bytes.fromhex(parts[4])
    except (ValueError, IndexError):
        m.error(50)
        return
    if ident not in m.sockets or len(payload) != length:
        m.error(530 if ident not in m.sockets else 50)
        return
    if not m.registered:
        m.error(30)
        return
    if _busy(m):
        return
    m.record_sent(f"{ip}:{port}", payload)
    m.ok(f"{ident},{length}")
    if len(parts) > 5:
        m.later(m.timings.send_ack, lambda: m.urc(f"+NSOSTR:{ident},{parts[5]},1"))


def nsorf(m: ModuleCore, op: str, args: str) -> None:
    parts = args.split(",")
    try:
        ident, limit = int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        m.error(50)
        return
    sock = m.sockets.get(ident)
    if sock is None:
        m.error(530)
        return
    if not sock.queue:
        m.ok()
        return
    if _busy(m):
        return
    ip, port, unread, whole = sock.queue.popleft()
    part, rest = unread[:limit], unread[limit:]
    if rest:
        sock.queue.appendleft((ip, port, rest, whole))
    remaining = sum(len(q[2]) for q in sock.queue)
    line = f"{ident},{ip},{port},{len(part)},{part.hex().upper()},{remaining}"
    # a partly read datagram counts once its last part is out
    m.respond([(line, None if rest else whole)])


def nsocl(m: ModuleCore, op: str, args: str) -> None:
    try:
        ident = int(args)
    except ValueError:
        m.error(50)
        return
    if m.sockets.pop(ident, None) is None:
        m.error(530)
        return
    m.ok()


def announce(m: ModuleCore, sock: Socket, payload: bytes, remote: str) -> None:
    """Queue the datagram; ``+NSONMI`` only if the buffer was empty."""
    ip, _, port = remote.rpartition(":")
    was_empty = not sock.queue
    sock.queue.append((ip, int(port), payload, payload))
    if was_empty:
        m.urc(f"+NSONMI:{sock.ident},{len(payload)}")


def banner(cause: str) -> list[str]:
    return [
        "Boot: Unsigned",
        "Security B.. Verified",
        "Protocol A.. Verified",
        "Apps A...... Verified",
        cause,
        "Neul",
        "OK",
    ]


HANDLERS: dict[str, Handler] = {
    **c.COMMON,
    "I": c.answer("Quectel", "BC95-G", "Revision:BC95GJBR01A04"),
    "+CGMR": c.answer(*FIRMWARE),
    "+NCCID": c.iccid("+NCCID"),
    "+CGPADDR": c.address("+CGPADDR:0,10.169.241.248"),
    "+NPTWEDRXS": c.plain_ok,
    "+NPSMR": c.sleep_urc_enable,
    "+NNMI": c.nnmi,
    "+NMGS": nmgs,
    "+NRB": nrb,
    "+NUESTATS": nuestats,
    "+NSOCR": nsocr,
    "+NSOST": nsost,
    "+NSORF": nsorf,
    "+NSOCL": nsocl,
}

SPEC = DialectSpec(
    name="bc95",
    tac="86772603",
    earfcn=3547,
    band=8,
    colon_space=False,
    banner=banner,
    reboot_lines=("REBOOTING",),
    sleep_line=lambda asleep: f"+NPSMR:{1 if asleep else 0}",
    announce=announce,
    error_while_booting=True,
    handlers=HANDLERS,
)
