"""Freed heap pages handed back to the OS, so that scoring's peak memory does not grow with the samples.

glibc keeps the pages that ``free`` returns to it, and a long pass whose batches allocate and free (decoded
images, backbone activations, stacked rows) can leave them scattered between small long-lived chunks (the
cache's tensors) where the next batch's larger requests do not fit: the heap then grows while the bytes in
use stay flat (measured at 8,000 samples, tiny profile: 470 MB in use, 625 MB freed and resident after one
backbone's pass). ``malloc_trim`` gives those pages back (``madvise``), also from the middle of the heap.

Scoring calls ``give_back_freed_memory()`` after each pass, and ``give_back_freed_memory(HEAP_GROWTH)``
after each batch: that one trims only once glibc's heaps have grown by more than ``HEAP_GROWTH`` since the
last trim, which a loop whose batches reuse what they free does not do; so such a loop pays one
read of ``/proc/self/statm`` a batch (``mallinfo2`` only once the resident bytes grew by the bound), not
the page faults of a trim every batch (trimming every batch cost +20% CPU at
8,000 samples). Elsewhere than glibc on Linux both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

HEAP_GROWTH = 1 << 27  # heap growth (bytes) a batch loop allows itself before it trims


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                     "usmblks", "fsmblks", "uordblks", "fordblks",
                                                     "keepcost")]


@dataclass(frozen=True)
class _Glibc:
    trim: Callable[[int], int]
    info: Callable[[], _MallInfo2] | None  # mallinfo2: glibc 2.33 and later


@functools.cache
def _glibc() -> _Glibc | None:
    """glibc's ``malloc_trim`` and ``mallinfo2`` (None where the C library has no ``malloc_trim``: musl,
    macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    info = getattr(libc, "mallinfo2", None)
    if info is not None:
        info.argtypes, info.restype = [], _MallInfo2
    return _Glibc(trim, info)


def heap_bytes() -> int | None:
    """The bytes glibc's heaps hold from the system (``mallinfo2().arena``: in use or freed, not its mmap'ed
    chunks); None without ``mallinfo2``."""
    libc = _glibc()
    return None if libc is None or libc.info is None else libc.info().arena


def resident_bytes() -> int:
    """This process's resident bytes now (``/proc/self/statm``: Linux only)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class _Lowest:
    """heap_bytes() and the resident bytes at their lowest since the last trim (or the first check)."""

    heap: int | None = None
    resident: int | None = None


_lowest = _Lowest()


def give_back_freed_memory(after_growth: int = 0) -> bool:
    """Return the freed heap pages to the OS (glibc ``malloc_trim``); with ``after_growth``, only once the
    heaps have grown by more than that over their lowest size since the last trim (never without
    ``mallinfo2``): a loop whose batches reuse the memory they free does not grow them. True when it
    trimmed."""
    libc = _glibc()
    if libc is None:
        return False
    if after_growth:
        if libc.info is None:
            return False
        # a heap that grew was touched: the resident bytes first (mallinfo2 walks the free lists, ~4 ms)
        resident = resident_bytes()
        if _lowest.resident is not None and resident - _lowest.resident <= after_growth:
            _lowest.resident = min(_lowest.resident, resident)
            return False
        held = libc.info().arena
        if _lowest.heap is None or held - _lowest.heap <= after_growth:
            _lowest.heap = held if _lowest.heap is None else min(_lowest.heap, held)
            _lowest.resident = resident
            return False
    libc.trim(0)
    _lowest.heap, _lowest.resident = heap_bytes(), resident_bytes()
    return True
