"""The sans-I/O AT core: bytes in, events out.

:class:`LineReader` cuts the module's byte stream into lines (``\\r``, ``\\n`` or ``\\r\\n``
alike), the ``>`` data prompt and raw payload blocks that follow some URCs. Its line buffer is
bounded: an over-long line is reported once as :class:`Garbage` and skipped to its end; a line
holding anything but printable ASCII is reported as :class:`Garbage` too. Nothing here raises
on bad input.

:class:`AtSession` adds the command engine: one command in flight at a time, each with its own
deadline (the caller passes ``now``; there is no clock here). Lines are routed so that URCs --
which may arrive anywhere, even between a command's echo and its final result -- are never
mistaken for response lines: a ``+NAME:`` line belongs to the command in flight only when
``NAME`` is that command's own name (and, for ``+CEREG``/``+CSCON``, the line has the read
answer's shape, not the URC's -- :data:`URC_FORMS`); boot-banner lines are URCs of kind ``boot`` and abort the
command in flight (unless it asked for the reboot).

Invariant: for a given starting state, every split of the same byte stream yields the same
events (tests feed every split).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

#: Longest line kept; longer lines are reported as garbage (a 512-byte datagram in hex plus
#: its header fits easily).
DEFAULT_MAX_LINE = 2048

_PRINTABLE = re.compile(rb"[\x20-\x7e\t]*")
_TERMINATORS = re.compile(rb"[\r\n]")

#: URCs that share their name with a read command, told apart by shape (3GPP TS 27.007):
#: the read answer starts ``<n>,<stat>``; the URC ``<stat>`` alone or ``<stat>,"<tac>",...``.
URC_FORMS: dict[str, re.Pattern[str]] = {
    "+CEREG": re.compile(r'\s*\d+\s*(,\s*".*)?'),
    "+CGREG": re.compile(r'\s*\d+\s*(,\s*".*)?'),
    "+CSCON": re.compile(r"\s*\d+\s*"),
}

FinalKind = Literal["ok", "error", "cme_error", "send_ok", "send_fail"]


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True, slots=True)
class TextLine:
    """One line of printable ASCII, stripped of surrounding blanks."""

    text: str


@dataclass(frozen=True, slots=True)
class PromptToken:
    """The ``>`` data prompt at the start of a line."""


@dataclass(frozen=True, slots=True)
class RawBlock:
    """Raw bytes that followed a URC announcing their length."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Garbage:
    """Bytes that are not a valid line: ``reason`` is ``overlong`` or ``undecodable``."""

    data: bytes
    reason: str


Token = TextLine | PromptToken | RawBlock | Garbage


class LineReader:
    """Split a byte stream into :data:`Token` values; bounded, never raises.

    ``raw_after`` matches a line that announces raw bytes; its group ``len`` is their count,
    and they follow the line's terminator (one ``\\n`` after a ``\\r`` is skipped).
    """

    def __init__(
        self, *, max_line: int = DEFAULT_MAX_LINE, raw_after: re.Pattern[str] | None = None
    ) -> None:
        self._max_line = max_line
        self._raw_after = raw_after
        self._buf = bytearray()
        self._discarding = False
        self._skip_lf = False
        self._raw_left = 0
        self._raw = bytearray()

    def feed(self, data: bytes) -> list[Token]:
        out: list[Token] = []
        i, n = 0, len(data)
        while i < n:
            if self._skip_lf:
                self._skip_lf = False
                if data[i] == 0x0A:
                    i += 1
                    continue
            if self._raw_left:
                take = data[i : i + self._raw_left]
                self._raw += take
                i += len(take)
                self._raw_left -= len(take)
                if not self._raw_left:
                    out.append(RawBlock(bytes(self._raw)))
                    self._raw.clear()
                continue
            if not self._buf and not self._discarding and data[i] == 0x3E:  # '>'
                out.append(PromptToken())
                i += 1
                continue
            m = _TERMINATORS.search(data, i)
            j = m.start() if m else n
            if not self._discarding:
                chunk = data[i:j]
                room = self._max_line - len(self._buf)
                if len(chunk) > room:
                    self._buf += chunk[:room]
                    out.append(Garbage(bytes(self._buf), "overlong"))
                    self._buf.clear()
                    self._discarding = True
                else:
                    self._buf += chunk
            if m is None:
                break
            if self._discarding:
                self._discarding = False
            else:
                self._end_line(out)
            self._skip_lf = data[j] == 0x0D
            i = j + 1
        return out

    def _end_line(self, out: list[Token]) -> None:
        raw = bytes(self._buf)
        self._buf.clear()
        if not _PRINTABLE.fullmatch(raw):
            out.append(Garbage(raw, "undecodable"))
            return
        text = raw.decode("ascii").strip()
        if not text:
            return
        out.append(TextLine(text))
        if self._raw_after is not None:
            m = self._raw_after.fullmatch(text)
            if m:
                self._raw_left = min(int(m.group("len")), self._max_line)
                if not self._raw_left:
                    out.append(RawBlock(b""))


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Final:
    """A final result code."""

    kind: FinalKind
    text: str
    code: int | None = None

    @property
    def ok(self) -> bool:
        return self.kind in ("ok", "send_ok")


@dataclass(frozen=True, slots=True)
class Response:
    """A command's intermediate lines and its final result."""

    command: str
    lines: tuple[str, ...]
    final: Final


@dataclass(frozen=True, slots=True)
class Urc:
    """An unsolicited result: ``+NAME: args`` (``kind`` urc) or a boot-banner line (boot)."""

    line: str
    name: str
    args: str
    kind: Literal["urc", "boot"] = "urc"
    payload: bytes | None = None

    @property
    def fields(self) -> list[str]:
        return split_fields(self.args)


@dataclass(frozen=True, slots=True)
class Prompt:
    """The ``>`` prompt: the command in flight waits for its data."""

    command: str | None


@dataclass(frozen=True, slots=True)
class Timeout:
    """The command in flight reached its deadline without a final result."""

    command: str
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Aborted:
    """The command in flight was cut short by a module reboot."""

    command: str
    lines: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Stray:
    """A response-shaped line or final result with no command waiting for it."""

    line: str


@dataclass(frozen=True, slots=True)
class Echo:
    """The module's echo of the command in flight (echo is on)."""

    command: str


Event = Response | Urc | Prompt | Timeout | Aborted | Stray | Garbage | Echo


def split_fields(args: str) -> list[str]:
    """``1,"5B57",,9`` -> ``['1', '5B57', '', '9']`` (quotes removed, commas inside kept)."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in args:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur).strip())
    return out


def parse_final(line: str) -> Final | None:
    """The final result code ``line`` is, or ``None``."""
    if line == "OK":
        return Final("ok", line)
    if line == "ERROR":
        return Final("error", line)
    if line == "SEND OK":
        return Final("send_ok", line)
    if line == "SEND FAIL":
        return Final("send_fail", line)
    if line.startswith(("+CME ERROR", "+CMS ERROR")):
        _, _, rest = line.partition(":")
        rest = rest.strip()
        return Final("cme_error", line, int(rest) if rest.isdigit() else None)
    return None


def command_name(command: str) -> str:
    """``AT+NSORF=1,512`` -> ``+NSORF``; ``ATI`` -> ``I``."""
    body = command[2:] if command[:2].upper() == "AT" else command
    for i, ch in enumerate(body):
        if ch in "=?":
            return body[:i].upper()
    return body.upper()


@dataclass(slots=True)
class _InFlight:
    command: str
    name: str
    deadline: float
    await_send_result: bool
    expect_reboot: bool
    lines: list[str] = field(default_factory=list)
    echoed: bool = False
    seen_ok: bool = False


class AtSession:
    """The command engine over a :class:`LineReader` (see the module docstring)."""

    def __init__(
        self,
        *,
        boot_prefixes: Iterable[str] = (),
        raw_after: re.Pattern[str] | None = None,
        max_line: int = DEFAULT_MAX_LINE,
    ) -> None:
        self._reader = LineReader(max_line=max_line, raw_after=raw_after)
        self._raw_after = raw_after
        self._boot = tuple(boot_prefixes)
        self._cmd: _InFlight | None = None
        self._pending_raw: Urc | None = None

    @property
    def busy(self) -> bool:
        return self._cmd is not None

    @property
    def deadline(self) -> float | None:
        return self._cmd.deadline if self._cmd else None

    @property
    def command(self) -> str | None:
        return self._cmd.command if self._cmd else None

    def send(
        self,
        command: str,
        now: float,
        timeout: float,
        *,
        await_send_result: bool = False,
        expect_reboot: bool = False,
    ) -> bytes:
        """Start ``command``; returns the bytes to write. One command at a time."""
        if self._cmd is not None:
            raise RuntimeError(f"{self._cmd.command} is still in flight")
        self._cmd = _InFlight(
            command, command_name(command), now + timeout, await_send_result, expect_reboot
        )
        return command.encode("ascii") + b"\r"

    def poll(self, now: float) -> list[Event]:
        """A :class:`Timeout` if the command in flight is past its deadline."""
        cmd = self._cmd
        if cmd is not None and now >= cmd.deadline:
            self._cmd = None
            return [Timeout(cmd.command, tuple(cmd.lines))]
        return []

    def cancel(self) -> None:
        """Forget the command in flight (its late lines will come out as strays)."""
        self._cmd = None

    def receive(self, data: bytes) -> list[Event]:
        out: list[Event] = []
        for token in self._reader.feed(data):
            if isinstance(token, TextLine):
                self._line(token.text, out)
            elif isinstance(token, RawBlock):
                urc = self._pending_raw
                self._pending_raw = None
                if urc is not None:
                    out.append(Urc(urc.line, urc.name, urc.args, urc.kind, token.data))
            elif isinstance(token, PromptToken):
                out.append(Prompt(self._cmd.command if self._cmd else None))
            else:
                out.append(token)
        return out

    def _line(self, line: str, out: list[Event]) -> None:
        cmd = self._cmd
        final = parse_final(line)
        if final is not None:
            if cmd is None:
                out.append(Stray(line))
            elif cmd.await_send_result and final.kind == "ok" and not cmd.seen_ok:
                cmd.seen_ok = True
            else:
                self._cmd = None
                out.append(Response(cmd.command, tuple(cmd.lines), final))
            return
        if cmd is not None and not cmd.echoed and not cmd.lines and line == cmd.command:
            cmd.echoed = True
            out.append(Echo(cmd.command))
            return
        if line.startswith(self._boot):
            out.append(Urc(line, line, "", "boot"))
            if cmd is not None and not cmd.expect_reboot:
                self._cmd = None
                out.append(Aborted(cmd.command, tuple(cmd.lines), f"module rebooted ({line})"))
            return
        if line.startswith("+"):
            name, sep, args = line.partition(":")
            name = name.strip().upper()
            form = URC_FORMS.get(name)
            is_urc_form = form is not None and form.fullmatch(args) is not None
            if cmd is not None and sep and name == cmd.name and not is_urc_form:
                cmd.lines.append(line)
                return
            urc = Urc(line, name, args.strip())
            if self._raw_after is not None and self._raw_after.fullmatch(line):
                self._pending_raw = urc
            else:
                out.append(urc)
            return
        if cmd is not None:
            cmd.lines.append(line)
        else:
            out.append(Stray(line))
