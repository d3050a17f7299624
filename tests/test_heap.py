"""Freed heap pages handed back to the OS: unconditionally after a pass, on heap growth inside batch loops."""

from __future__ import annotations

import pytest

from pigeon_bench import heap

MB = 2**20
glibc = pytest.mark.skipif(heap._glibc() is None, reason="the C library has no malloc_trim (not glibc)")
mallinfo2 = pytest.mark.skipif(heap._glibc() is None or heap._glibc().info is None,
                               reason="the C library has no mallinfo2 (glibc < 2.33)")


def _freed_chunks(n: int = 40_000) -> bytearray:
    """~n x 4 KB of heap chunks freed, the last one kept in use at the heap's top (free() alone cannot shrink
    the heap below it)."""
    held = [bytearray(4096) for _ in range(n)]
    return held[-1]


@glibc
def test_freed_heap_pages_go_back_to_the_os():
    keep = _freed_chunks()
    before = heap.resident_bytes()
    assert heap.give_back_freed_memory()
    assert before - heap.resident_bytes() > 100 * MB and len(keep) == 4096


@mallinfo2
def test_a_batch_loop_trims_once_the_heap_grows_past_the_bound_and_not_while_it_reuses_memory():
    assert heap.give_back_freed_memory()
    free_now = heap._glibc().info().fordblks  # what the heap can serve without growing
    assert not heap.give_back_freed_memory(100 * MB)
    keep = _freed_chunks((free_now + 160 * MB) // 4096)  # the heap grows by >= 160 MB
    before = heap.resident_bytes()
    assert not heap.give_back_freed_memory(free_now + 400 * MB)  # under a larger bound: kept
    assert heap.give_back_freed_memory(100 * MB)
    assert before - heap.resident_bytes() > 100 * MB
    for _ in range(3):  # batches that allocate and free the same memory again do not grow the heap
        held = [bytearray(4096) for _ in range(30_000)]
        del held
        assert not heap.give_back_freed_memory(100 * MB)
    assert len(keep) == 4096
