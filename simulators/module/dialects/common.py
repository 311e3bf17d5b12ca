"""Handlers every family shares (identity, registration, PSM), with the family's formats."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simulators.module.core import ModuleCore
    from simulators.module.dialects import Handler


def at(m: ModuleCore, op: str, args: str) -> None:
    m.ok()


def ate0(m: ModuleCore, op: str, args: str) -> None:
    m.echo = False
    m.ok()


def ate1(m: ModuleCore, op: str, args: str) -> None:
    m.echo = True
    m.ok()


def cmee(m: ModuleCore, op: str, args: str) -> None:
    m.cmee = args.strip() == "1"
    m.ok()


def cgsn(m: ModuleCore, op: str, args: str) -> None:
    m.ok(m.p("+CGSN", m.imei))


def cimi(m: ModuleCore, op: str, args: str) -> None:
    m.ok(m.imsi)


def cfun(m: ModuleCore, op: str, args: str) -> None:
    m.ok(m.p("+CFUN", 1)) if op == "?" else m.ok()


def cereg(m: ModuleCore, op: str, args: str) -> None:
    if op == "=":
        try:
            m.cereg_n = int(args)
        except ValueError:
            m.error(50)
            return
        m.ok()
    elif op == "?":
        rest = ""
        if m.cereg_n >= 2 and m.registered:
            rest = f',"{m.radio.tac:04X}","{m.radio.cell_id:08X}",9'
        m.ok(m.p("+CEREG", f"{m.cereg_n},{m.reg_stat}{rest}"))
    else:
        m.error(50)


def cgatt(m: ModuleCore, op: str, args: str) -> None:
    m.ok(m.p("+CGATT", 1 if m.registered else 0)) if op == "?" else m.ok()


def csq(m: ModuleCore, op: str, args: str) -> None:
    rssi = m.radio.rsrp + 20
    n = max(0, min(31, round((rssi + 113) / 2)))
    m.ok(m.p("+CSQ", f"{n},{99 if m.dialect == 'bc95' else 0}"))


def serving_cell(m: ModuleCore, padded: bool) -> str:
    """The engineering-mode fields ``+CENG`` (SIM7020) and ``+QENG`` (BC66) lay out alike,
    after the radio drifts: ``earfcn,offset,pci,"cellid",rsrp,rsrq,rssi,snr,band,"tac",ecl``
    in whole dBm/dB; ``padded``: cell id and TAC in 8 and 4 hex digits."""
    r = m.radio
    r.drift(m.rng)
    cell, tac = (f"{r.cell_id:08X}", f"{r.tac:04X}") if padded else (f"{r.cell_id:X}", f"{r.tac:X}")
    return (
        f'{r.earfcn},2,{r.pci},"{cell}",{round(r.rsrp)},{round(r.rsrq)},'
        f'{round(r.rsrp + 20)},{round(r.snr)},{r.band},"{tac}",{r.ecl}'
    )


def cscon(m: ModuleCore, op: str, args: str) -> None:
    m.ok(m.p("+CSCON", "0,1")) if op == "?" else m.ok()


def cpsms(m: ModuleCore, op: str, args: str) -> None:
    if op == "?":
        m.ok(m.p("+CPSMS", 1 if m.psm_enabled else 0))
        return
    parts = [p.strip().strip('"') for p in args.split(",")]
    m.psm_enabled = parts[0] == "1"
    if m.psm_enabled and len(parts) >= 5 and len(parts[4]) == 8:
        unit = {"000": 2, "001": 60, "010": 360}.get(parts[4][:3])
        if unit is not None:
            # the module's active time, shortened by the simulation speed
            m.psm_active = unit * int(parts[4][3:], 2) * m.timings.boot / 3.0
    m.ok()
    m.touch()


def plain_ok(m: ModuleCore, op: str, args: str) -> None:
    m.ok()


def answer(*lines: str) -> Handler:
    """A handler answering fixed ``lines`` (a family's product and firmware texts)."""

    def handler(m: ModuleCore, op: str, args: str) -> None:
        m.ok(*lines)

    return handler


def iccid(name: str) -> Handler:
    """The SIM's ICCID after ``name`` (``+NCCID``, ``+QCCID``), bare when ``name`` is empty."""

    def handler(m: ModuleCore, op: str, args: str) -> None:
        m.ok(m.p(name, m.iccid) if name else m.iccid)

    return handler


def address(line: str) -> Handler:
    """``+CGPADDR``: the family's ``line`` once registered, no address before."""

    def handler(m: ModuleCore, op: str, args: str) -> None:
        m.ok(line) if m.registered else m.ok()

    return handler


def sleep_urc_enable(m: ModuleCore, op: str, args: str) -> None:
    m.sleep_urcs = args.strip().startswith("1")
    m.ok()


def nnmi(m: ModuleCore, op: str, args: str) -> None:
    with contextlib.suppress(ValueError):
        m.nnmi = int(args)
    m.ok()


#: the shared part of every table
COMMON: dict[str, Handler] = {
    "": at,
    "E0": ate0,
    "E1": ate1,
    "+CMEE": cmee,
    "+CGSN": cgsn,
    "+CIMI": cimi,
    "+CFUN": cfun,
    "+CEREG": cereg,
    "+CGATT": cgatt,
    "+CSQ": csq,
    "+CSCON": cscon,
    "+CPSMS": cpsms,
    "+CEDRXS": plain_ok,
}
