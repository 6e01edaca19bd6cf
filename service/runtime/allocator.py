"""glibc's malloc settings for the process, in a module that loads no onnxruntime (a benchmark
worker measuring another engine imports it without carrying onnxruntime in its peak RSS)."""

from __future__ import annotations

import ctypes


def retain_freed_memory(megabytes: int) -> bool:
    """glibc's malloc: allocations below `megabytes` come from the heap, and up to twice that of
    freed memory stays there for the next ones, instead of each large array being a fresh
    mapping whose pages fault in on first touch. A decoder step's arrays (a beam batch's logits,
    each cache's two buffers) are allocated anew at every call; glibc's own threshold adapts
    only up to the last freed size and then returns the memory at once, so beam search spent
    much of its time in page faults (BENCHMARKS.md section 9). A process-wide setting; 0 leaves
    glibc's defaults. Returns whether it applied (False where the C library is not glibc)."""
    if megabytes <= 0:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    size = megabytes << 20
    return bool(mallopt(m_mmap_threshold, size)) and bool(mallopt(m_trim_threshold, 2 * size))


def trim_heap() -> None:
    """glibc: give the heap's free pages back to the system (freed memory is kept for reuse up
    to twice `retain_freed_memory`'s size otherwise); nothing where the C library is not glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
