"""``make mutants``: apply each deliberate defect under tests/mutants/ and prove a test fails.

Each ``*.patch`` is a small unified diff against the tree, with a header of ``# key: value``
lines before the diff:

* ``# defect:`` what the patch breaks, in one line;
* ``# tests:`` the pytest node ids expected to catch it (run first, in this order), then the
  rest of ``# suite:`` (default ``tests/e2e``) if none of them did.

For each mutant, the tree is copied (without .venv, caches and .git) to a temporary folder, the
patch is applied there with ``git apply`` (the working tree is never touched), and pytest runs
with ``PYTHONPATH`` pointing at the copy, so that the services the tests start as processes run
the mutated code too. A mutant is *killed* when a test fails; one that survives every test is a
missing test, and the run exits 1. Results go to the terminal and, with ``--doc``, into the
mutants table of docs/reliability.md.

    python -m tests.mutants.run [--only NAME] [--doc]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
IGNORE = shutil.ignore_patterns(
    ".venv", ".git", ".mypy_cache", ".ruff_cache", ".pytest_cache", "__pycache__", "node-red"
)
DOC = ROOT / "docs" / "reliability.md"
BEGIN = "<!-- mutants:begin -->"
END = "<!-- mutants:end -->"


@dataclass
class Mutant:
    name: str
    path: Path
    defect: str
    tests: list[str]
    suite: list[str]


@dataclass
class Outcome:
    mutant: Mutant
    killed: bool
    killer: str
    seconds: float
    note: str = ""


def load(path: Path) -> Mutant:
    header: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"#\s*(\w+):\s*(.*)", line)
        if not m:
            break
        header[m.group(1)] = m.group(2).strip()
    return Mutant(
        name=path.stem,
        path=path,
        defect=header.get("defect", path.stem),
        tests=header.get("tests", "").split(),
        suite=header.get("suite", "tests/e2e").split(),
    )


def mutants(only: str | None) -> list[Mutant]:
    found = [load(p) for p in sorted(HERE.glob("*.patch"))]
    return [m for m in found if only is None or m.name == only]


def pytest(copy: Path, args: list[str], timeout: float) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(copy), "CITYSENSE_MUTANT": "1"}
    env.pop("CITYSENSE_RELIABILITY_DOC", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *args],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def failed_test(output: str) -> str:
    m = re.search(r"^FAILED (\S+)", output, re.M)
    return m.group(1) if m else "?"


def run(m: Mutant, timeout: float) -> Outcome:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"mutant-{m.name}-") as tmp:
        copy = Path(tmp) / "tree"
        shutil.copytree(ROOT, copy, ignore=IGNORE)
        applied = subprocess.run(
            ["git", "apply", "--unidiff-zero", str(m.path)],
            cwd=copy,
            capture_output=True,
            text=True,
            check=False,
        )
        if applied.returncode != 0:
            return Outcome(m, False, "", 0.0, f"patch does not apply: {applied.stderr.strip()}")
        for batch in ([*m.tests], [*m.suite]):
            if not batch:
                continue
            rc, out = pytest(copy, batch, timeout)
            if rc == 1:
                return Outcome(m, True, failed_test(out), time.monotonic() - started)
            if rc not in (0, 5):
                return Outcome(
                    m, False, "", time.monotonic() - started, f"pytest exit {rc}:\n{out[-3000:]}"
                )
    return Outcome(m, False, "", time.monotonic() - started, "survived every test")


def table(outcomes: list[Outcome]) -> str:
    rows = [
        "| mutant | defect | killed by | time (s) |",
        "|---|---|---|---:|",
    ]
    for o in outcomes:
        killer = f"`{o.killer}`" if o.killed else f"**survived** ({o.note.splitlines()[0]})"
        rows.append(f"| `{o.mutant.name}` | {o.mutant.defect} | {killer} | {o.seconds:.0f} |")
    return "\n".join(rows)


def write_doc(outcomes: list[Outcome]) -> None:
    text = DOC.read_text()
    block = f"{BEGIN}\n{table(outcomes)}\n{END}"
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n## Mutants\n\n" + block + "\n"
    DOC.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run one mutant (the patch file's stem)")
    parser.add_argument("--doc", action="store_true", help="write the table into docs/")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per pytest run")
    args = parser.parse_args()
    outcomes = []
    chosen = mutants(args.only)
    if not chosen:
        print("no mutant matches", file=sys.stderr)
        return 2
    for i, m in enumerate(chosen, 1):
        print(f"[{i}/{len(chosen)}] {m.name}: {m.defect} ...", flush=True)
        o = run(m, args.timeout)
        outcomes.append(o)
        verdict = f"killed by {o.killer}" if o.killed else f"SURVIVED: {o.note}"
        print(f"    {verdict} ({o.seconds:.0f} s)", flush=True)
    print(table(outcomes))
    if args.doc and args.only is None:
        write_doc(outcomes)
    survivors = [o for o in outcomes if not o.killed]
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
