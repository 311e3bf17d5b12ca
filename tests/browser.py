"""Headless Chromium for the tests: a page's DOM after its scripts ran, and a screenshot.

Chromium runs as a process group of its own with a throw-away profile; the group is killed
when the call returns, so no renderer or GPU process is left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from tests.servers import ensure_binary

#: Virtual time the page gets to run its scripts (fetches included), milliseconds.
BUDGET_MS = 20_000
TIMEOUT = 90.0


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    binary = ensure_binary("chromium")
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--metrics-recording-only",
        "--mute-audio",
        f"--user-data-dir={profile}",
        "--window-size=1366,900",
        f"--virtual-time-budget={BUDGET_MS}",
        *args,
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def dump_dom(url: str, profile: Path) -> str:
    """The page's DOM (serialised HTML) once its scripts had their virtual time."""
    result = _chromium(["--dump-dom", url], profile)
    if result.returncode != 0 or not result.stdout.strip():
        raise RuntimeError(f"chromium --dump-dom {url} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def screenshot(url: str, path: Path, profile: Path) -> Path:
    """Save a PNG screenshot of the page to ``path``."""
    result = _chromium([f"--screenshot={path}", url], profile)
    if not path.exists() or path.stat().st_size == 0:
        raise RuntimeError(f"chromium --screenshot {url} failed:\n{result.stderr[-3000:]}")
    return path
