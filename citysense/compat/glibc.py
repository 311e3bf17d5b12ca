"""glibc's allocator: keep freed large blocks for the next request.

The operator API answers a city's ``latest`` and ``/devices`` as megabytes of JSON. glibc
serves a block above its mmap threshold with a fresh mapping, and gives the top of the heap
back to the kernel once more than its trim threshold is free; both thresholds start small
(128 KiB) and are raised only by what the process happened to free before. Either way the
next answer's bytes are faulted in again, page by page: on a virtual machine, copying a
3.7 MB answer took 2.5 ms instead of 0.1 ms, and most of a request's time.

:func:`keep_large_blocks` sets both thresholds with ``mallopt(3)``: blocks up to
``mmap_bytes`` come from the heap, and up to ``trim_bytes`` of free heap stays mapped for the
next request. The cost is that memory: up to 64 MiB of free heap stays with the process (a
city's whole answers and their copies fit several times over).

:func:`release_free_memory` is the other way round, for a process whose work comes in bursts
(the API's quality checks): ``malloc_trim(3)`` gives the free heap back to the kernel after
each burst, instead of keeping the burst's peak for good.

Only on glibc (the constants are glibc's); elsewhere both do nothing and return False.
"""

from __future__ import annotations

import ctypes
import logging
import platform
from collections.abc import Callable
from typing import cast

log = logging.getLogger(__name__)

#: ``mallopt`` parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc's ceiling for M_MMAP_THRESHOLD on 64-bit (HEAP_MAX_SIZE / 2)
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024


def _libc(name: str, *argtypes: type[ctypes._SimpleCData]) -> Callable[..., int] | None:
    """The C library's function ``name`` returning int, or None when not on glibc."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        fn = getattr(ctypes.CDLL(None), name)  # the C library this process runs on
    except (OSError, AttributeError):
        return None
    fn.argtypes = argtypes
    fn.restype = ctypes.c_int
    return cast(Callable[..., int], fn)


def keep_large_blocks(
    mmap_bytes: int = MMAP_THRESHOLD_MAX, trim_bytes: int = 64 * 1024 * 1024
) -> bool:
    """Raise glibc's mmap and trim thresholds; True when both were set."""
    mallopt = _libc("mallopt", ctypes.c_int, ctypes.c_int)
    if mallopt is None:
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, min(mmap_bytes, MMAP_THRESHOLD_MAX)))
    ok = bool(mallopt(M_TRIM_THRESHOLD, trim_bytes)) and ok
    if not ok:
        log.debug("glibc refused the allocator thresholds")
    return ok


def release_free_memory() -> bool:
    """Give the heap's free memory back to the kernel; True when some was released."""
    trim = _libc("malloc_trim", ctypes.c_size_t)
    return trim is not None and bool(trim(0))
