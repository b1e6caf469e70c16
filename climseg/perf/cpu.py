"""CPU runtime settings that make training on a few cores faster.

PyTorch frees and reallocates the same large activation buffers every step.
glibc serves blocks above its mmap threshold with fresh mappings, so each step
pays page faults for memory it just returned (measured: a third of the CPU
time in the kernel for the tiny network at 192 x 288). Telling glibc to serve
everything from the heap and to keep freed memory removes that cost. One
arena for all threads keeps batches that FastLoader's thread allocates and
the main thread frees in the same retained heap (with per-thread arenas the
loader faulted in every batch anew: 78 against 190 samples/s at 768 x 1152).
Set ``CLIMSEG_MALLOC_TUNING=0`` to leave the allocator alone.
"""

import ctypes
import os
import sys

ENV_VAR = "CLIMSEG_MALLOC_TUNING"
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8


def tune_cpu_allocator():
    """On Linux with glibc: no mmap for large blocks, keep up to 1 GiB of freed heap,
    one arena for all threads. Returns True if the settings were applied."""
    if os.environ.get(ENV_VAR, "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return (
            libc.mallopt(M_ARENA_MAX, 1) == 1
            and libc.mallopt(M_MMAP_MAX, 0) == 1
            and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
        )
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
