"""glibc's allocator thresholds: a large answer's memory is kept for the next one.

Each case runs in a process of its own (the thresholds are process-wide and cannot be set
back to glibc's dynamic defaults) and counts the minor page faults of building and freeing
answers of a few megabytes, as the operator API does per request."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from citysense.compat.glibc import keep_large_blocks

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")

PROBE = """
import resource, sys
from citysense.compat.glibc import keep_large_blocks
if sys.argv[1] == "keep":
    assert keep_large_blocks()
body = b"x" * 3_700_000
for _ in range(5):  # let glibc's own thresholds settle first
    answer = b"{" + body + b"}"; copy = answer + b" "; del answer, copy
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):  # an answer and its copy per request, freed after it
    answer = b"{" + body + b"}"; copy = answer + b" "; del answer, copy
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 50)
"""


def faults_per_answer(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return float(out.stdout)


@glibc_only
def test_kept_blocks_are_not_faulted_in_again() -> None:
    default = faults_per_answer("default")
    kept = faults_per_answer("keep")
    # 7.4 MB a request is ~1,800 pages; kept, the heap has them mapped already
    assert default > 500, default
    assert kept < 50, kept


def test_elsewhere_nothing_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert keep_large_blocks() is False


TRIM_PROBE = """
import sys
from citysense.compat.glibc import release_free_memory

def rss_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

# 300 MB of list arrays from the heap (80 KB each, under the mmap threshold), then all freed
# but the last one, which pins the top of the heap: glibc cannot shrink it on its own
blocks = [[0] * 10_000 for _ in range(4_000)]
pin = blocks[-1]
del blocks
before = rss_kb()
released = release_free_memory() if sys.argv[1] == "trim" else False
print(before, rss_kb(), released)
"""


@glibc_only
@pytest.mark.parametrize("mode", ["keep", "trim"])
def test_released_memory_goes_back_to_the_kernel(mode: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", TRIM_PROBE, mode], capture_output=True, text=True, check=True
    )
    before, after, released = out.stdout.split()
    assert int(before) > 250_000  # the freed blocks are still counted
    if mode == "trim":
        assert released == "True" and int(after) < int(before) - 200_000
    else:
        assert int(after) > int(before) - 50_000
