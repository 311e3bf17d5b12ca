"""Every option a user page names exists in that command's ``--help``.

The pages under docs/ and the README are what an operator follows; an option they name that
the command does not take is a dead end at the worst moment. Two checks:

* a shell line ``citysense WORDS... --opt ...`` (in a code block or inline code): every
  ``--opt`` on it is in ``citysense WORDS --help``;
* an option named on its own in inline code (`` `--opt VALUE` ``): it is in the ``--help`` of
  one of the commands the page is about (or, for a page not listed, of any command).

Options of other programs (mosquitto, pip, coap-client, ...) are recognised by the program
name that starts the same code span or line, and skipped.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

#: page -> the commands it is about (for options named on their own).
PAGE_COMMANDS: dict[str, tuple[str, ...]] = {
    "gateway.md": ("edge", "edge probe"),
    "ingest.md": ("ingest", "ingest dead-letters"),
    "api.md": ("api",),
    "demo.md": ("demo",),
    "simulators.md": ("simulate fleet", "simulate module", "fleet generate", "demo"),
    "serial-modules.md": ("edge", "edge probe", "simulate module"),
}

OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


@functools.cache
def help_options(command: str) -> frozenset[str] | None:
    """The options in ``citysense COMMAND --help``, or None if that is not a command."""
    proc = subprocess.run(
        [sys.executable, "-m", "citysense", *command.split(), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        return None
    return frozenset(OPTION.findall(proc.stdout))


@functools.cache
def all_commands() -> tuple[str, ...]:
    proc = subprocess.run(
        [sys.executable, "-m", "citysense", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    heads = re.findall(r"^\s{4}([a-z][a-z-]*)\s", proc.stdout, re.M)
    found: list[str] = []
    for head in dict.fromkeys(heads):
        sub = subprocess.run(
            [sys.executable, "-m", "citysense", head, "--help"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        found.append(head)
        for tail in dict.fromkeys(re.findall(r"^\s{4}([a-z][a-z-]*)\s", sub.stdout, re.M)):
            found.append(f"{head} {tail}")
    return tuple(found)


def command_of(words: list[str]) -> str | None:
    """The longest prefix of ``words`` (after ``citysense``) that is a command."""
    plain = [w for w in words if re.fullmatch(r"[a-z][a-z-]*", w)]
    for n in (3, 2, 1):  # e.g. `api keys add`
        if len(plain) >= n and help_options(" ".join(plain[:n])) is not None:
            return " ".join(plain[:n])
    return None


def shell_lines(text: str) -> list[str]:
    lines: list[str] = []
    for block in FENCE.findall(text):
        lines.extend(block.splitlines())
    lines.extend(CODE_SPAN.findall(FENCE.sub("", text)))
    return lines


def citysense_invocations(line: str) -> list[tuple[str, list[str]]]:
    """(command words, options) for each ``citysense ...`` in a shell line."""
    found = []
    for part in re.split(r"\||&&|;|\$\(", line):
        tokens = part.split()
        for i, tok in enumerate(tokens):
            if tok.endswith("citysense") and not tok.endswith("/citysense/"):
                rest = tokens[i + 1 :]
                words = []
                for w in rest:
                    if w.startswith("-"):
                        break
                    words.append(w)
                found.append((" ".join(words), OPTION.findall(" ".join(rest))))
                break
    return found


def test_options_on_citysense_command_lines_exist() -> None:
    problems: list[str] = []
    for page in PAGES:
        for line in shell_lines(page.read_text()):
            for words, options in citysense_invocations(line):
                if not options:
                    continue
                command = command_of(words.split())
                if command is None:
                    continue
                known = help_options(command) or frozenset()
                for opt in options:
                    if opt not in known and opt not in ("--help", "--version"):
                        problems.append(f"{page.name}: `citysense {command}` has no {opt}")
    assert not problems, "\n".join(sorted(set(problems)))


def test_options_named_alone_exist_in_the_page_commands() -> None:
    problems: list[str] = []
    for page in PAGES:
        text = FENCE.sub("", page.read_text())
        commands = PAGE_COMMANDS.get(page.name) or all_commands()
        known: set[str] = {"--help", "--version"}
        for command in commands:
            known |= help_options(command) or frozenset()
        for span in CODE_SPAN.findall(text):
            first = span.split()[0] if span.split() else ""
            if not first.startswith("--"):
                continue  # a command line (checked above) or another program's
            for opt in OPTION.findall(span):
                if opt not in known:
                    problems.append(f"{page.name}: {opt} is not an option of {', '.join(commands)}")
    assert not problems, "\n".join(sorted(set(problems)))


@pytest.mark.parametrize("bad", ["--no-such-option"])
def test_the_check_sees_a_missing_option(bad: str) -> None:
    assert bad not in (help_options("edge") or frozenset())
    assert command_of(["edge", "probe"]) == "edge probe"
    assert citysense_invocations(f"citysense edge {bad} x") == [("edge", [bad])]


def test_help_texts_say_what_the_options_do() -> None:
    fleet = subprocess.run(
        [sys.executable, "-m", "citysense", "simulate", "fleet", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout
    assert "--mqtt" not in fleet  # the fleet speaks CoAP only
    assert "where the devices send" in " ".join(fleet.split())
    edge = " ".join(
        subprocess.run(
            [sys.executable, "-m", "citysense", "edge", "--help"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        ).stdout.split()
    )
    assert "reconnects to the broker" in edge
